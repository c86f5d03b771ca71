"""Workers die with their `paddle.distributed.launch` process.

The launcher starts each worker in a session of its own, so a kill of the
launcher (or of its process group) does not reach them: they would train on
as orphans, writing checkpoints nobody waits for. Linux's parent-death signal
makes the kernel kill a worker as soon as its launcher is gone; checkpoints
appear under their final name only once complete, so the kill leaves the last
complete one as it was.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

logger = logging.getLogger("codegen.training")

_PR_SET_PDEATHSIG = 1
_LAUNCHER_MODULES = (b"paddle.distributed.launch", b"paddle.distributed.fleet.launch")


def exit_with_launcher() -> None:
    """Under paddle.distributed.launch, have the kernel kill this worker when the launcher exits.

    A run without a launcher is left alone: its parent is a shell or a test
    runner, and `nohup python run_clm.py` must outlive its shell.
    """
    if "PADDLE_TRAINER_ID" not in os.environ:  # set by the launcher for each worker it starts
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        logger.warning("cannot ask to be killed with the launcher (%s): if it is killed, stop this worker by hand", e)
        return
    # The signal comes when the thread that started us ends (the launcher starts its workers
    # from its main thread), and from whoever is our parent now: if the launcher died while
    # this process started, we were already handed to another parent and would never get it.
    if not _is_launcher(os.getppid()):
        sys.exit("run_clm.py: error: PADDLE_TRAINER_ID is set but this worker's parent is not "
                 "paddle.distributed.launch: the launcher has exited")


def _is_launcher(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg in _LAUNCHER_MODULES or os.path.basename(arg) == b"fleetrun" for arg in argv)

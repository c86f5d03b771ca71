"""kill -9 of `paddle.distributed.launch` alone: its workers (each in a session of its own) exit too,
and the last complete checkpoint stays complete."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, two_rank_launch


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the fields after the parenthesised name: state, parent pid, ...
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # an orphan's zombie waits for a reaper that may never come


def poll(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_workers_exit_when_the_launcher_is_killed(tiny_model_dir, tmp_path):
    from codegen.checkpoints import load_model
    from codegen.training.trainer import checkpoint_dirs

    out = tmp_path / "out"
    command = two_rank_launch(REPO / "run_clm.py", tiny_model_dir, tmp_path, "--max_steps", "100000",
                              "--save_steps", "2", "--logging_steps", "1000")
    launcher = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = []
    try:
        # a checkpoint gathers from both ranks: once one exists, both are training
        started = poll(lambda: checkpoint_dirs(out) or launcher.poll() is not None, timeout=300)
        logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("workerlog.*")))
        assert started and launcher.poll() is None, f"training did not start:\n{logs[-3000:]}"
        workers = children_of(launcher.pid)
        assert len(workers) == 2

        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert poll(lambda: not any(alive(pid) for pid in workers), timeout=30), \
            "the workers train on without their launcher"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    checkpoints = checkpoint_dirs(out)
    for checkpoint in checkpoints:
        assert {"model.safetensors", "config.json", "optimizer.pdopt", "trainer_state.json", "rng_state_2.pth"} <= \
            {p.name for p in checkpoint.iterdir()}, checkpoint
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        assert checkpoint.name == f"checkpoint-{step}"
    load_model(checkpoints[-1])


def test_a_worker_whose_launcher_already_exited_stops_at_once(tmp_path):
    # the launcher's environment, but the parent is this test: as if the launcher had died while the worker started
    result = subprocess.run([sys.executable, str(REPO / "run_clm.py"), "--output_dir", str(tmp_path)],
                            env={**os.environ, "PYTHONPATH": str(REPO), "PADDLE_TRAINER_ID": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("is not paddle.distributed.launch: the launcher has exited")

"""Run untrusted programs: own directory, own process group, hard limits, nothing left behind.

Every command runs in a new session (so one signal reaches its whole process
group) with rlimits set between fork and exec: address space, CPU seconds,
largest file, no core dumps. Where the platform lets us, more layers are
added, each detected once and reported by `Sandbox.protections`:

- a filesystem jail (bubblewrap, `bwrap`): the root read-only; a private,
  size-capped /tmp and /dev/shm; the user's home, /root, /home and
  $CODEGEN_HOME hidden behind empty private directories; /etc/passwd showing
  only root, nobody and our user, the password hashes empty. Writable: the
  program's own directory and what its toolchain asks for (a build cache).
  Readable: the rest of the system, and what the toolchain asks for (its
  install, when that lives in a hidden directory). Capabilities are dropped,
  so a program running as root cannot unmount any of this.
- no network and a PID namespace whose init is the program (bwrap, or
  `unshare --net --pid --fork --kill-child` without it), so when the program
  dies the kernel kills every process it left behind, even ones that called
  setsid() to leave our process group.
- a pids cgroup per run with `pids.max`: the only process-count limit that
  binds root, since the kernel ignores RLIMIT_NPROC for uid 0. Without one,
  RLIMIT_NPROC is used, which counts every process of the user (so it is set
  relative to what the user already runs) and does nothing for root.

Without bwrap (or where it may not run) programs run with our user's file
permissions: they can read and write whatever we can. In every case the
working directory, HOME and TMPDIR point into the program's own temporary
directory.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

_ISOLATION_PREFIX = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--")
# the same namespaces for an unprivileged user, who may create them inside a user namespace
_USER_ISOLATION_PREFIX = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--")
# --as-pid-1: the program is the namespace's init, so the kernel kills what it leaves behind when it
# exits (bwrap's own init would wait for those); --cap-drop ALL: as root it would keep the capabilities
_BWRAP_OPTIONS = ("--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--as-pid-1",
                  "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc")
_PASSWORD_HASHES = (Path("/etc/shadow"), Path("/etc/gshadow"))
NOT_JAILED = ("programs can read and write every file this user can: /tmp, $HOME, the models under "
              "$CODEGEN_HOME")


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0                  # wall-clock seconds, the whole process tree included
    memory_bytes: int = 2 << 30           # address space of each process
    max_processes: int = 64               # processes and threads alive at once (a JVM needs ~25)
    max_output_bytes: int = 64 << 10      # kept of stdout and of stderr each; the rest is read and dropped
    max_file_bytes: int = 64 << 20        # largest file a process may write


@dataclass
class Completed:
    returncode: int | None                # negative: killed by that signal; None: killed at the timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


class Sandbox:
    """Detects what isolation the platform allows, then runs commands under it.

    Thread-safe: workers share one Sandbox. Call `close()` (or use `with`) to
    remove the cgroup it made.
    """

    def __init__(self):
        self._jailed = _bwrap_works()
        self._prefix = () if self._jailed else _detect_isolation_prefix()
        self._hidden = _private_directories() if self._jailed else []
        self._cgroups = _PidsCgroups.create()
        self._nproc_base = None if self._cgroups or os.geteuid() == 0 else _tasks_of_user(os.getuid())
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def protections(self) -> list[str]:
        found = ["own session + rlimits (memory, cpu, file size)"]
        if self._jailed:
            found.append("filesystem jail (bwrap): read-only root, private /tmp and $HOME, "
                         "$CODEGEN_HOME hidden")
            found.append("no network + PID namespace (bwrap)")
        else:
            found.append(f"NO filesystem jail: {NOT_JAILED}")
        if self._prefix:
            found.append("no network + PID namespace (unshare)")
        if self._cgroups:
            found.append("process limit via a pids cgroup")
        elif self._nproc_base is not None:
            found.append("process limit via RLIMIT_NPROC (counts all of this user's processes)")
        else:
            found.append("NO process limit: running as root without a writable pids cgroup")
        return found

    def run(self, argv: list[str], cwd: Path, limits: Limits, env: dict[str, str] | None = None,
            readable: Sequence[Path] = (), writable: Sequence[Path] = ()) -> Completed:
        """Run `argv` in `cwd` with `env` added to a minimal environment; always kills what is left.

        Inside the jail `cwd` is writable, and so are the `writable` paths; the `readable`
        ones are shown read-only even where they lie in a hidden directory.
        """
        with self._lock:
            self._counter += 1
            name = f"run{self._counter}"
        cgroup = self._cgroups.new(name, limits.max_processes) if self._cgroups else None
        nproc = None if self._nproc_base is None else self._nproc_base + limits.max_processes
        passwd = _passwd_pipe() if self._jailed else None
        if self._jailed:
            argv = _jail_argv(cwd, limits, self._hidden, passwd, readable, writable) + list(argv)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(self._prefix) + list(argv), cwd=cwd, env=_child_env(cwd, env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=_limiter(limits, nproc, cgroup), pass_fds=() if passwd is None else (passwd,))
        except BaseException:
            if cgroup:
                cgroup.remove()
            raise
        finally:
            if passwd is not None:
                os.close(passwd)
        try:
            stdout, stderr, timed_out = _collect(proc, start + limits.timeout, limits.max_output_bytes)
        finally:
            _kill_group(proc)
            if cgroup:
                cgroup.kill_all()
                cgroup.remove()
            proc.wait()
        return Completed(None if timed_out else proc.returncode, _text(stdout), _text(stderr), timed_out,
                         time.monotonic() - start)

    def close(self):
        if self._cgroups:
            self._cgroups.close()
            self._cgroups = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_workdir(parent: Path) -> Path:
    """A fresh directory for one program, readable only by us."""
    return Path(tempfile.mkdtemp(prefix="s", dir=parent))


def remove_tree(path: Path) -> None:
    """Delete a program's directory even if the program took away our permissions on parts of it."""
    def make_writable_and_retry(function, failed_path, _exc):
        try:
            os.chmod(os.path.dirname(failed_path), stat.S_IRWXU)
            os.chmod(failed_path, stat.S_IRWXU)
        except OSError:
            pass
        function(failed_path)
    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _child_env(workdir: Path, extra: dict[str, str] | None) -> dict[str, str]:
    # nothing of ours leaks in (tokens, proxies): only what toolchains need to start
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(workdir),
           "TMPDIR": str(workdir), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0",
           "OMP_NUM_THREADS": "1"}
    env.update(extra or {})
    return env


def _limiter(limits: Limits, nproc: int | None, cgroup: "_Cgroup | None"):
    cpu_seconds = math.ceil(limits.timeout) + 1
    cgroup_procs = str(cgroup.procs_file) if cgroup else None

    def apply_limits():
        # runs in the child between fork and exec: only async-signal-safe-ish calls, no imports
        if cgroup_procs:
            fd = os.open(cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply_limits


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Read both pipes until the program exits or the deadline passes; keep `cap` bytes of each.

    Returns (stdout, stderr, timed_out).
    """
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    selector = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream.fileno(), selectors.EVENT_READ)
    reads_after_exit = 0
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            exited = proc.poll() is not None
            # once the program is gone take what is buffered and stop: a child it left
            # holding the pipe must not keep us here
            events = selector.select(0 if exited else min(remaining, 0.1))
            if exited:
                reads_after_exit += 1
                if not events or reads_after_exit > 64:
                    break
            for key, _ in events:
                chunk = _read_some(key.fd)
                if chunk is None:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = kept[key.fd]
                buffer += chunk[:max(0, cap - len(buffer))]
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        return bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()]), timed_out
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()


def _read_some(fd: int) -> bytes | None:
    """Up to 64 KiB; b"" at end of file, None if nothing is ready after all."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _detect_isolation_prefix() -> tuple[str, ...]:
    if not shutil.which("unshare"):
        logger.info("unshare not found: programs run with network access and without a PID namespace")
        return ()
    for prefix in (_ISOLATION_PREFIX, _USER_ISOLATION_PREFIX):
        try:
            probe = subprocess.run(list(prefix) + ["true"], stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    logger.info("unshare is not permitted here: programs run with network access and without a PID namespace")
    return ()


@cache
def _bwrap_works() -> bool:
    """Whether programs can run under bwrap; says once per process what is not contained if not."""
    why = "bwrap (Debian's bubblewrap) is not installed"
    if shutil.which("bwrap"):
        probe_dir = Path(tempfile.mkdtemp(prefix="codegen-bwrap-probe-"))
        try:
            probe = subprocess.run(_jail_argv(probe_dir, Limits(), [], None, (), ()) + ["true"], cwd=probe_dir,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
            if probe.returncode == 0:
                return True
            why = f"bwrap cannot run here ({probe.stderr.strip() or f'exit status {probe.returncode}'})"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"bwrap cannot run here ({e})"
        finally:
            remove_tree(probe_dir)
    logger.warning("%s: generated code runs without a filesystem jail: %s", why, NOT_JAILED)
    return False


def _jail_argv(cwd: Path, limits: Limits, hidden: list[Path], passwd: int | None, readable: Sequence[Path],
               writable: Sequence[Path]) -> list[str]:
    # later mounts go on top of earlier ones: hide first, then show what must be seen
    size = str(limits.max_file_bytes)
    argv = ["bwrap", *_BWRAP_OPTIONS]
    for directory in [Path("/tmp"), Path("/dev/shm"), *hidden]:
        argv += ["--size", size, "--tmpfs", str(directory)]
    if passwd is not None:
        argv += ["--ro-bind-data", str(passwd), "/etc/passwd"]
    for secret in _PASSWORD_HASHES:
        if secret.exists():
            argv += ["--ro-bind", "/dev/null", str(secret)]
    for path in readable:
        if os.path.exists(path):
            argv += ["--ro-bind", str(path), str(path)]
    for path in [*writable, cwd]:
        if os.path.exists(path):
            argv += ["--bind", str(path), str(path)]
    return argv + ["--chdir", str(cwd), "--"]


def _private_directories() -> list[Path]:
    """Hidden from programs: where users keep their files, and the models (the default
    $CODEGEN_HOME, ~/.cache/codegen, is inside the home)."""
    candidates = [Path.home(), Path("/root"), Path("/home")]
    if os.environ.get("CODEGEN_HOME"):
        candidates.append(Path(os.environ["CODEGEN_HOME"]).resolve())
    return [path for path in dict.fromkeys(candidates) if path.is_dir()]


def _passwd_pipe() -> int:
    """A pipe holding the /etc/passwd the program sees: the accounts it may need to look up, no others."""
    uid, gid = os.getuid(), os.getgid()
    lines = ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    if uid not in (0, 65534):
        lines.append(f"user:x:{uid}:{gid}:user:/nonexistent:/bin/sh")
    reader, writer = os.pipe()
    os.write(writer, ("\n".join(lines) + "\n").encode())
    os.close(writer)
    return reader


def python_paths() -> list[Path]:
    """Where the Python running codegen is installed: Python programs run on it."""
    return list(dict.fromkeys(Path(p) for p in (sys.prefix, sys.base_prefix)))


def _tasks_of_user(uid: int) -> int:
    """Threads (which RLIMIT_NPROC counts) of every process that `uid` runs now."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip())
    return total


class _Cgroup:
    def __init__(self, path: Path):
        self.path = path
        self.procs_file = path / "cgroup.procs"

    def kill_all(self) -> None:
        # a bounded fork bomb may still be forking as we kill; pids.max keeps the rounds few
        for _ in range(100):
            try:
                pids = [int(p) for p in self.procs_file.read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.001)

    def remove(self) -> None:
        # killed processes leave the cgroup once reaped, which can lag the kill by a moment
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                self.kill_all()
                time.sleep(0.005)
        logger.warning("could not remove cgroup %s", self.path)


class _PidsCgroups:
    """A cgroup of our own under the pids controller, with one child per program run."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def create(cls) -> "_PidsCgroups | None":
        for parent in _pids_cgroup_parents():
            root = parent / f"codegen-eval-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                root.mkdir()
            except OSError:
                continue
            probe = root / "probe"
            try:
                probe.mkdir()
                (probe / "pids.max").write_text("1")
                probe.rmdir()
                return cls(root)
            except OSError:
                for leftover in (probe, root):
                    try:
                        leftover.rmdir()
                    except OSError:
                        pass
        return None

    def new(self, name: str, max_processes: int) -> _Cgroup:
        path = self.root / name
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
        return _Cgroup(path)

    def close(self) -> None:
        try:
            self.root.rmdir()
        except OSError as e:
            logger.warning("could not remove cgroup %s: %s", self.root, e)


def _pids_cgroup_parents() -> list[Path]:
    """Directories where a pids cgroup of ours could go: our own cgroup on v1 or v2."""
    parents = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return parents
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "pids" in controllers.split(","):
            parents.append(Path("/sys/fs/cgroup/pids") / relative)
        elif hierarchy == "0":
            for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                if (mount / relative / "cgroup.controllers").exists():
                    parents.append(mount / relative)
    return [p for p in parents if p.is_dir() and os.access(p, os.W_OK)]

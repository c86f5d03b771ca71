"""The sandbox contains what generated code may do by accident: hang, fork, eat memory, flood, linger;
and, under bwrap, keeps it from the files outside its own directory."""
import ast
import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from codegen.evaluation import sandbox as sandbox_module
from codegen.evaluation.sandbox import Limits, Sandbox, make_workdir, python_paths, remove_tree


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


def run_python(sandbox, tmp_path, code, *args, **limits):
    workdir = make_workdir(tmp_path)
    (workdir / "p.py").write_text(code)
    try:
        return sandbox.run([sys.executable, "p.py", *args], workdir, Limits(**limits), readable=python_paths())
    finally:
        remove_tree(workdir)
        assert not workdir.exists()


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_runs_in_own_directory_with_clean_environment(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_TEST_SECRET", "do-not-leak")
    code = ("import os\nprint(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n"
            "print(os.environ.get('CODEGEN_TEST_SECRET'))\nimport sys\nsys.stderr.write('err')\nsys.exit(3)")
    ran = run_python(sandbox, tmp_path, code, timeout=10)
    assert ran.stdout.split() == ["True", "None"]
    assert ran.stderr == "err" and ran.returncode == 3 and not ran.timed_out


def test_infinite_loop_times_out(sandbox, tmp_path):
    ran = run_python(sandbox, tmp_path, "while True:\n    pass\n", timeout=1)
    assert ran.timed_out and ran.returncode is None
    assert ran.seconds < 10


def test_fork_bomb_is_contained_and_cleaned_up(sandbox, tmp_path):
    if any("NO process limit" in p for p in sandbox.protections):
        pytest.skip("no process limit can be enforced here (root without a writable pids cgroup)")
    marker = f"forkbomb-{uuid.uuid4().hex}"
    code = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    ran = run_python(sandbox, tmp_path, code, marker, timeout=2, max_processes=16)
    assert ran.timed_out
    assert processes_with(marker) == []


def test_process_limit_binds(sandbox, tmp_path):
    if any("NO process limit" in p for p in sandbox.protections):
        pytest.skip("no process limit can be enforced here (root without a writable pids cgroup)")
    code = ("import os, time\nstarted = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    started += 1\nprint(started)\n")
    ran = run_python(sandbox, tmp_path, code, timeout=10, max_processes=16)
    assert ran.returncode == 0
    assert 0 < int(ran.stdout) < 16


def test_memory_hog_gets_memory_error(sandbox, tmp_path):
    ran = run_python(sandbox, tmp_path, "x = bytearray(3 << 30)\nprint('allocated')\n",
                     timeout=10, memory_bytes=512 << 20)
    assert not ran.timed_out and ran.returncode != 0
    assert "MemoryError" in ran.stderr and "allocated" not in ran.stdout


def test_output_is_bounded(sandbox, tmp_path):
    code = "import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 10000)\n"
    ran = run_python(sandbox, tmp_path, code, timeout=20, max_output_bytes=1000)
    assert ran.returncode == 0 and len(ran.stdout) == 1000


def test_file_size_is_bounded(sandbox, tmp_path):
    ran = run_python(sandbox, tmp_path, "open('big', 'wb').write(b'x' * (2 << 20))\n",
                     timeout=10, max_file_bytes=1 << 20)
    assert ran.returncode != 0 and "File too large" in ran.stderr


def test_detached_children_are_killed(sandbox, tmp_path):
    marker = f"linger-{uuid.uuid4().hex}"
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "else:\n    print('parent done')\n")
    ran = run_python(sandbox, tmp_path, code, marker, timeout=10)
    assert ran.returncode == 0 and ran.stdout == "parent done\n" and not ran.timed_out
    assert processes_with(marker) == []


def test_no_network(sandbox, tmp_path):
    if not any("no network" in p for p in sandbox.protections):
        pytest.skip("network namespaces are not permitted here")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "    print('connected')\nexcept OSError as e:\n    print('refused')\n")
        ran = run_python(sandbox, tmp_path, code, timeout=10)
    assert ran.stdout.strip() == "refused"


def require_jail(box: Sandbox) -> Sandbox:
    # skipped only where bwrap is missing: installed but unusable is a failure to see
    if not shutil.which("bwrap"):
        pytest.skip("bwrap is not installed (apt-get install bubblewrap)")
    assert any(p.startswith("filesystem jail (bwrap)") for p in box.protections), box.protections
    return box


@pytest.fixture
def jailed(sandbox):
    return require_jail(sandbox)


TRY_WRITE = """import sys
for path in sys.argv[1:]:
    try:
        with open(path, "w") as f:
            f.write("written")
        print("wrote", path)
    except OSError as e:
        print("refused", path, type(e).__name__)
"""

TRY_READ = """import sys
for path in sys.argv[1:]:
    try:
        print("read", path, repr(open(path).read()))
    except OSError as e:
        print("refused", path, type(e).__name__)
"""


def test_writes_to_tmp_and_home_stay_inside(jailed, tmp_path):
    marker = f"codegen-jail-{uuid.uuid4().hex}"
    outside = [Path("/tmp") / marker, Path.home() / marker, Path("/var/tmp") / marker]
    try:
        ran = run_python(jailed, tmp_path, TRY_WRITE, *map(str, outside), timeout=10)
        assert ran.returncode == 0, ran.stderr
        assert [p for p in outside if p.exists()] == []
        # the read-only root refuses outright; /tmp and the home are private and empty
        assert f"refused /var/tmp/{marker} OSError" in ran.stdout
    finally:
        for path in outside:
            path.unlink(missing_ok=True)


def test_own_directory_is_writable(jailed, tmp_path):
    workdir = make_workdir(tmp_path)
    (workdir / "p.py").write_text("open('out.txt', 'w').write('kept')\n")
    ran = jailed.run([sys.executable, "p.py"], workdir, Limits(timeout=10), readable=python_paths())
    assert ran.returncode == 0, ran.stderr
    assert (workdir / "out.txt").read_text() == "kept"


def test_models_and_home_are_not_readable(tmp_path, monkeypatch):
    # outside /tmp, which is private anyway: this is the hiding of $CODEGEN_HOME itself
    models = Path(tempfile.mkdtemp(prefix="codegen-home-", dir="/var/tmp"))
    in_home = Path.home() / f".codegen-jail-{uuid.uuid4().hex}"
    try:
        (models / "model.safetensors").write_text("weights")
        in_home.write_text("private")
        monkeypatch.setenv("CODEGEN_HOME", str(models))
        with Sandbox() as box:
            ran = run_python(require_jail(box), tmp_path, TRY_READ, str(models / "model.safetensors"), str(in_home), timeout=10)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split("\n")[:2] == [f"refused {models / 'model.safetensors'} FileNotFoundError",
                                              f"refused {in_home} FileNotFoundError"]
    finally:
        remove_tree(models)
        in_home.unlink(missing_ok=True)


def test_system_accounts_are_not_shown(jailed, tmp_path):
    ran = run_python(jailed, tmp_path, TRY_READ, "/etc/passwd", "/etc/shadow", timeout=10)
    assert ran.returncode == 0, ran.stderr
    passwd, shadow = ran.stdout.splitlines()
    assert passwd.startswith("read /etc/passwd ")
    shown = {line.split(":")[0] for line in ast.literal_eval(passwd.split(" ", 2)[2]).splitlines()}
    assert shown == {"root", "nobody"} | ({"user"} if os.getuid() not in (0, 65534) else set())
    assert len(Path("/etc/passwd").read_text().splitlines()) > len(shown)
    # /dev/null mounted over it, on a mount that allows no device files
    assert shadow == "refused /etc/shadow PermissionError"


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """PATH holds unshare but not bwrap; the per-process bwrap probe is forgotten before and after."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").symlink_to(shutil.which("unshare") or "/usr/bin/unshare")
    monkeypatch.setenv("PATH", str(bin_dir))
    sandbox_module._bwrap_works.cache_clear()
    yield
    sandbox_module._bwrap_works.cache_clear()


def test_without_bwrap_one_warning_says_what_is_not_contained(no_bwrap, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="codegen.evaluation.sandbox"):
        with Sandbox() as first, Sandbox():
            ran = run_python(first, tmp_path, "print('ran')", timeout=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "bwrap (Debian's bubblewrap) is not installed" in warnings[0]
    assert "can read and write every file this user can: /tmp, $HOME, the models under $CODEGEN_HOME" in warnings[0]
    assert any(p.startswith("NO filesystem jail") for p in first.protections)
    assert ran.returncode == 0 and ran.stdout == "ran\n"

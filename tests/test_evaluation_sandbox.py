"""The sandbox contains what generated code may do by accident: hang, fork, eat memory, flood, linger."""
import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

from codegen.evaluation.sandbox import Limits, Sandbox, make_workdir, remove_tree


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


def run_python(sandbox, tmp_path, code, *args, **limits):
    workdir = make_workdir(tmp_path)
    (workdir / "p.py").write_text(code)
    try:
        return sandbox.run([sys.executable, "p.py", *args], workdir, Limits(**limits))
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

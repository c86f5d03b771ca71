"""The toolchain of each language: is it here, how to build a program, how to run it, how to read the outcome.

Every program, and every compiler run on generated code, goes through the
sandbox. What is slow to set up is done once per evaluation in `prepare`
(and cached on disk across evaluations): Rust's rand/regex/md5 crates, Go's
standard library and testify, a resident javac.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import programs
from .problems import Problem
from .sandbox import Completed, Limits, Sandbox, make_workdir, python_paths, remove_tree

logger = logging.getLogger(__name__)

# compilers get more room than programs: rustc and the go tool use several GB of address space and many threads
COMPILE_LIMITS = Limits(timeout=60.0, memory_bytes=8 << 30, max_processes=512, max_output_bytes=64 << 10,
                        max_file_bytes=512 << 20)
# building Go's standard library into a fresh cache, or Rust's crates, takes a while the first time
SETUP_LIMITS = Limits(timeout=900.0, memory_bytes=8 << 30, max_processes=512, max_output_bytes=64 << 10,
                      max_file_bytes=1 << 30)


class ToolchainMissing(Exception):
    """A language cannot be evaluated on this machine; its message says what is missing."""

    def __init__(self, language: str, missing: str):
        super().__init__(f"{language}: {missing}")
        self.language = language
        self.missing = missing


def cache_dir() -> Path:
    """Build caches that outlive one evaluation (Go build cache, Rust crates, the javac server)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codegen" / "evaluation"


@contextmanager
def _cache_lock(name: str):
    """Serialises evaluations that build the same cache entry at the same time."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Toolchain:
    language = ""
    source_name = ""

    def missing(self) -> str | None:
        """What is not installed, or None when everything needed is."""
        return None

    def prepare(self, sandbox: Sandbox, work: Path) -> None:
        """One-time setup before the first program; raises ToolchainMissing if the toolchain is broken."""

    def known_bad(self) -> dict[str, str]:
        """task_id -> why its canonical solution cannot pass with this toolchain here."""
        return {}

    def program(self, problem: Problem, completion: str) -> str:
        return programs.assemble(problem, completion)

    def compile(self, sandbox: Sandbox, workdir: Path, program: str) -> Completed | None:
        """Build the program written in workdir; None for interpreted languages."""
        return None

    def run(self, sandbox: Sandbox, workdir: Path, limits: Limits) -> Completed:
        raise NotImplementedError

    def judge(self, ran: Completed) -> tuple[str, str]:
        """(status, error text) of a finished run that did not time out."""
        return ("passed", "") if ran.returncode == 0 else ("failed", failure_text(ran))

    def close(self) -> None:
        """Stop anything `prepare` started."""


def _judge_finished(ran: Completed) -> tuple[str, str]:
    """For programs that end with exit status TESTS_FINISHED once every test ran."""
    if ran.returncode == programs.TESTS_FINISHED:
        return "passed", ""
    if ran.returncode == 0:
        return "failed", failure_text(ran, EXITED_EARLY)
    return "failed", failure_text(ran)


EXITED_EARLY = "exited with status 0 before its tests finished"


def failure_text(ran: Completed, note: str = "") -> str:
    # stderr last: the error is what counts, and long texts are cut from the front
    parts = [text.strip() for text in (ran.stdout, ran.stderr) if text.strip()]
    if ran.returncode is not None and ran.returncode < 0:
        parts.append(f"killed by {_signal_name(-ran.returncode)}")
    if note:
        parts.append(note)
    elif not parts:
        parts.append(f"exit status {ran.returncode}")
    return "\n".join(parts)


def _install_of(tool: str) -> list[Path]:
    """The directory a tool is installed in (the one above its bin/), for the sandbox to show.

    It matters when that lies in a directory the sandbox hides, like ~/.nvm or ~/.sdkman.
    """
    found = shutil.which(tool)
    return [Path(os.path.realpath(found)).parents[1]] if found else []


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class PythonToolchain(Toolchain):
    language, source_name = "python", "program.py"

    def run(self, sandbox, workdir, limits):
        # -I: no user site-packages or PYTHON* variables; -B: no .pyc files
        return sandbox.run([sys.executable, "-I", "-B", self.source_name], workdir, limits,
                           readable=python_paths())

    def judge(self, ran):
        if ran.returncode != programs.TESTS_FINISHED and _is_python_syntax_error(ran.stderr):
            return "compile error", failure_text(ran)
        return _judge_finished(ran)


def _is_python_syntax_error(stderr: str) -> bool:
    # a file that does not parse gets no traceback header, only the error and where it is
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return bool(lines) and "Traceback (most recent call last)" not in stderr and bool(
        re.match(r"(SyntaxError|IndentationError|TabError)\b", lines[-1]))


class CppToolchain(Toolchain):
    language, source_name = "cpp", "main.cpp"
    # problems whose programs include a library beyond the standard one: (probe program, link flags, reason)
    LIBRARIES = {
        ("CPP/22", "CPP/137"): ("#include<boost/any.hpp>\nint main(){}\n", [],
                                "uses boost::any; Boost headers not found (apt-get install libboost-dev)"),
        ("CPP/162",): ("#include<openssl/md5.h>\nint main(){MD5_CTX c; MD5_Init(&c);}\n", ["-lcrypto"],
                       "hashes with OpenSSL's MD5; OpenSSL not found (apt-get install libssl-dev)"),
    }

    def __init__(self):
        self._known_bad: dict[str, str] = {}

    def missing(self):
        return None if shutil.which("g++") else "g++ not found (apt-get install g++)"

    def prepare(self, sandbox, work):
        for tasks, (probe, flags, reason) in self.LIBRARIES.items():
            if not _builds(sandbox, work, self.source_name, probe, ["g++", "-w", self.source_name, *flags],
                           readable=_install_of("g++")):
                self._known_bad.update((task, reason) for task in tasks)

    def known_bad(self):
        return dict(self._known_bad)

    def compile(self, sandbox, workdir, program):
        argv = ["g++", "-std=c++17", "-w", self.source_name, "-o", "main"]
        if programs.needs_openssl(program):
            argv.append("-lcrypto")
        return sandbox.run(argv, workdir, COMPILE_LIMITS, readable=_install_of("g++"))

    def run(self, sandbox, workdir, limits):
        return sandbox.run(["./main"], workdir, limits)

    def judge(self, ran):
        return _judge_finished(ran)


def _builds(sandbox: Sandbox, work: Path, source_name: str, source: str, argv: list[str],
            env: dict[str, str] | None = None, readable: list[Path] = ()) -> bool:
    """Whether a probe program builds (or, for an interpreter, runs) cleanly."""
    probe = make_workdir(work)
    try:
        (probe / source_name).write_text(source)
        return sandbox.run(argv, probe, COMPILE_LIMITS, env, readable=readable).returncode == 0
    finally:
        remove_tree(probe)


class JavaScriptToolchain(Toolchain):
    language, source_name = "js", "program.js"
    NEEDS_MD5 = "JavaScript/162"

    def __init__(self):
        self._known_bad: dict[str, str] = {}
        # JavaScript/162 requires the js-md5 npm package: looked for in our cache, then in NODE_PATH
        modules = [str(cache_dir() / "node_modules")] + [p for p in os.environ.get("NODE_PATH", "").split(":") if p]
        self._env = {"NODE_PATH": ":".join(modules)}
        self._readable = _install_of("node") + [Path(p) for p in modules]

    def missing(self):
        return None if shutil.which("node") else "node not found (apt-get install nodejs)"

    def prepare(self, sandbox, work):
        if not _builds(sandbox, work, self.source_name, "require('js-md5')\n", ["node", self.source_name],
                       self._env, self._readable):
            self._known_bad[self.NEEDS_MD5] = (
                "its canonical solution requires the js-md5 npm package, not found "
                f"(npm install --prefix {cache_dir()} js-md5)")

    def known_bad(self):
        return dict(self._known_bad)

    def compile(self, sandbox, workdir, program):
        # parse only, so that a syntax error reads as a compile error as in the other languages
        return sandbox.run(["node", "--check", self.source_name], workdir, COMPILE_LIMITS, self._env,
                           readable=self._readable)

    def run(self, sandbox, workdir, limits):
        return sandbox.run(["node", self.source_name], workdir, limits, self._env, readable=self._readable)

    def judge(self, ran):
        # the tests use console.assert, which only prints "Assertion failed" and carries on
        if "Assertion failed" in ran.stderr:
            return "failed", failure_text(ran)
        return _judge_finished(ran)


class JavaToolchain(Toolchain):
    language, source_name = "java", "Main.java"
    # small fixed heap and reservations so the JVM starts under the sandbox's address-space limit
    JVM_FLAGS = ["-Xmx512m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=64m"]

    def __init__(self):
        self._servers: queue.LifoQueue[_JavacServer] = queue.LifoQueue()
        self._server_classes: Path | None = None

    def missing(self):
        absent = [tool for tool in ("javac", "java") if not shutil.which(tool)]
        return f"{' and '.join(absent)} not found (apt-get install default-jdk-headless)" if absent else None

    def prepare(self, sandbox, work):
        source = Path(__file__).with_name("java") / "CompileServer.java"
        version = subprocess.run(["javac", "-version"], capture_output=True, text=True).stdout.strip()
        key = hashlib.sha256(source.read_bytes() + version.encode()).hexdigest()[:16]
        classes = cache_dir() / f"javac-server-{key}"
        with _cache_lock("javac-server"):
            if not (classes / "CompileServer.class").is_file():
                classes.mkdir(parents=True, exist_ok=True)
                built = subprocess.run(["javac", "-d", str(classes), str(source)], capture_output=True, text=True)
                if built.returncode != 0:
                    raise ToolchainMissing(self.language, f"javac could not build {source.name}: {built.stderr}")
        self._server_classes = classes

    def compile(self, sandbox, workdir, program):
        try:
            server = self._servers.get_nowait()
        except queue.Empty:
            server = _JavacServer(self._server_classes)
        result = server.compile(workdir, COMPILE_LIMITS.timeout, COMPILE_LIMITS.max_output_bytes)
        if result.timed_out:
            server.stop()
        elif server.alive():
            self._servers.put(server)
        return result

    def run(self, sandbox, workdir, limits):
        return sandbox.run(["java", *self.JVM_FLAGS, "-cp", ".", programs.JAVA_LAUNCHER], workdir, limits,
                           readable=_install_of("java"))

    def judge(self, ran):
        return _judge_finished(ran)

    def close(self):
        while not self._servers.empty():
            self._servers.get_nowait().stop()


class _JavacServer:
    """One resident `CompileServer` JVM; used by one worker at a time."""

    def __init__(self, classes: Path):
        home = classes / "home"
        home.mkdir(exist_ok=True)
        self._proc = subprocess.Popen(
            ["java", "-Xmx768m", "-XX:+UseSerialGC", "-cp", str(classes), "CompileServer"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8"})
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._pending = b""

    def compile(self, directory: Path, timeout: float, cap: int) -> Completed:
        start = time.monotonic()
        deadline = start + timeout
        try:
            self._proc.stdin.write(f"{directory}\n".encode())
            self._proc.stdin.flush()
            header = self._read_until(lambda buf: b"\n" in buf, deadline)
            if header is None:
                return Completed(None, "", f"javac did not finish in {timeout:.0f} s", True,
                                 time.monotonic() - start)
            line, _, rest = header.partition(b"\n")
            status, length = (int(x) for x in line.split())
            self._pending = rest
            body = self._read_until(lambda buf: len(buf) >= length, deadline)
            if body is None:
                return Completed(None, "", f"javac did not finish in {timeout:.0f} s", True,
                                 time.monotonic() - start)
            messages, self._pending = body[:length], body[length:]
        except (ValueError, OSError) as e:
            # javac itself died (say, out of memory on a monstrous program): this sample's build failed
            self.stop()
            return Completed(3, "", f"the javac server stopped unexpectedly: {e}", False, time.monotonic() - start)
        return Completed(status, "", messages[:cap].decode("utf-8", "replace"), False, time.monotonic() - start)

    def _read_until(self, done, deadline: float) -> bytes | None:
        buffer = self._pending
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout.fileno(), selectors.EVENT_READ)
            while not done(buffer):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if selector.select(remaining):
                    chunk = os.read(self._proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        raise OSError("end of output")
                    buffer += chunk
        return buffer

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class GoToolchain(Toolchain):
    language, source_name = "go", "main_test.go"
    # like `go test`, which CodeGeeX ran, this vets the package first; -s -w only leaves out debug info
    BUILD = ["go", "test", "-c", "-ldflags=-s -w", "-o", "program.test", "."]

    def __init__(self):
        self._gopath = _find_testify_gopath()

    def missing(self):
        if not shutil.which("go"):
            return "go not found (apt-get install golang-go golang-github-stretchr-testify-dev)"
        if self._gopath is None:
            return ("github.com/stretchr/testify not found in GOPATH or /usr/share/gocode "
                    "(apt-get install golang-github-stretchr-testify-dev)")
        return None

    def _env(self) -> dict[str, str]:
        # GOPATH mode: the tests import testify from a GOPATH tree, no module download is possible
        return {"GO111MODULE": "off", "GOPATH": str(self._gopath), "GOCACHE": str(self._cache()),
                "CGO_ENABLED": "0", "GOFLAGS": "", "GOTOOLCHAIN": "local", "GOPROXY": "off"}

    @staticmethod
    def _cache() -> Path:
        return cache_dir() / "go-build"

    def _build(self, sandbox: Sandbox, workdir: Path, limits: Limits) -> Completed:
        # the build cache is shared by every build, so it must be writable inside the sandbox
        return sandbox.run(self.BUILD, workdir, limits, self._env(), readable=_install_of("go") + [self._gopath],
                           writable=[self._cache()])

    def prepare(self, sandbox, work):
        # compile the standard library and testify into the shared build cache once
        warmup = make_workdir(work)
        try:
            imports = "".join(f'    _ "{package}"\n' for package in programs.GO_PACKAGES)
            (warmup / self.source_name).write_text(
                'package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n'
                + imports + ')\n\nfunc TestWarmup(t *testing.T) { assert.Equal(t, 1, 1) }\n')
            self._cache().mkdir(parents=True, exist_ok=True)
            built = self._build(sandbox, warmup, SETUP_LIMITS)
            if built.returncode != 0:
                raise ToolchainMissing(self.language, "go could not build a test that imports testify: "
                                       + failure_text(built)[-1000:])
        finally:
            remove_tree(warmup)

    def compile(self, sandbox, workdir, program):
        return self._build(sandbox, workdir, COMPILE_LIMITS)

    def run(self, sandbox, workdir, limits):
        # as `go test` runs it: a test calling os.Exit(0) panics instead of passing silently
        return sandbox.run(["./program.test", "-test.paniconexit0"], workdir, limits)


def _find_testify_gopath() -> Path | None:
    candidates = [p for p in os.environ.get("GOPATH", "").split(os.pathsep) if p]
    candidates += [os.path.join(os.path.expanduser("~"), "go"), "/usr/share/gocode"]
    for root in candidates:
        if (Path(root) / "src" / "github.com" / "stretchr" / "testify" / "assert").is_dir():
            return Path(root)
    return None


class RustToolchain(Toolchain):
    """rustc directly (cargo per program is several times slower), linking crates built once by cargo.

    The HumanEval-X declarations `use rand::Rng; use regex::Regex; use md5;`. The
    crates come from Debian's packaged registry (/usr/share/cargo/registry, from
    `apt-get install librust-rand-dev librust-regex-dev librust-md5-dev`) or from
    cargo's own offline cache. Without them the `use` lines are dropped and the
    problems whose code or tests need the crates are known-bad.
    """
    language, source_name = "rust", "main.rs"
    CRATES = {"rand": "0.8", "regex": "1", "md5": "0.7"}
    NEEDS_CRATES = {
        "Rust/32": "its test draws random polynomials with the rand crate",
        "Rust/38": "its test draws random strings with the rand crate",
        "Rust/50": "its test draws random strings with the rand crate",
        "Rust/53": "its test draws random numbers with the rand crate",
        "Rust/91": "the canonical solution uses the regex crate",
        "Rust/160": "its test uses the rand crate",
        "Rust/162": "the canonical solution uses the md5 crate",
    }
    DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")

    def __init__(self):
        self._rustc = None
        self._sysroot: Path | None = None
        self._externs: list[str] | None = None
        self._crates: Path | None = None
        self._crates_problem = ""

    def missing(self):
        if not shutil.which("rustc"):
            return "rustc not found (install Rust with rustup, or apt-get install rustc)"
        return None

    def prepare(self, sandbox, work):
        # call the toolchain's own binaries: rustup's proxies need the real HOME, which the sandbox replaces
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True)
        bin_dir = Path(sysroot.stdout.strip()) / "bin"
        if sysroot.returncode != 0 or not (bin_dir / "rustc").is_file():
            raise ToolchainMissing(self.language, f"rustc does not work: {sysroot.stderr.strip()[-500:]}")
        self._rustc = str(bin_dir / "rustc")
        self._sysroot = bin_dir.parent
        with _cache_lock("rust-crates"):
            self._externs = self._build_crates(sandbox, bin_dir)

    def known_bad(self):
        if self._externs is None:
            return {task: f"{why}; not buildable here: {self._crates_problem}"
                    for task, why in self.NEEDS_CRATES.items()}
        return {}

    def program(self, problem, completion):
        return programs.assemble(problem, completion, rust_crates=self._externs is not None)

    def compile(self, sandbox, workdir, program):
        argv = [self._rustc, "--edition", "2021", "--test", self.source_name, "-o", "main",
                "-C", "debuginfo=0", "-A", "warnings", *(self._externs or [])]
        crates = [self._crates] if self._externs else []
        return sandbox.run(argv, workdir, COMPILE_LIMITS, readable=[self._sysroot, *crates])

    def run(self, sandbox, workdir, limits):
        return sandbox.run(["./main", "--test-threads=1"], workdir, limits)

    def judge(self, ran):
        # the harness prints its summary only after every test ran; exit(0) inside a test skips it
        if ran.returncode == 0 and "test result: ok." not in ran.stdout:
            return "failed", failure_text(ran, EXITED_EARLY)
        return super().judge(ran)

    def _build_crates(self, sandbox: Sandbox, bin_dir: Path) -> list[str] | None:
        cargo = bin_dir / "cargo"
        if not cargo.is_file():
            self._crates_problem = "cargo not found beside rustc"
            return None
        rustc_version = subprocess.run([self._rustc, "-vV"], capture_output=True, text=True).stdout
        use_debian = all(any(self.DEBIAN_REGISTRY.glob(f"{name}-*")) for name in self.CRATES)
        key = hashlib.sha256((rustc_version + repr(self.CRATES) + str(use_debian)).encode()).hexdigest()[:16]
        project = cache_dir() / f"rust-crates-{key}"
        deps = project / "target" / "debug" / "deps"
        if not (project / "built").is_file():
            remove_tree(project)
            (project / "src").mkdir(parents=True)
            (project / "src" / "lib.rs").write_text("")
            (project / "Cargo.toml").write_text(
                '[package]\nname = "humaneval_crates"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n'
                + "".join(f'{name} = "{version}"\n' for name, version in self.CRATES.items()))
            env = {"CARGO_HOME": os.environ.get("CARGO_HOME", os.path.join(os.path.expanduser("~"), ".cargo")),
                   "RUSTC": self._rustc, "CARGO_TARGET_DIR": str(project / "target")}
            if use_debian:
                (project / ".cargo").mkdir()
                (project / ".cargo" / "config.toml").write_text(
                    '[source.crates-io]\nreplace-with = "packaged"\n\n'
                    f'[source.packaged]\ndirectory = "{self.DEBIAN_REGISTRY}"\n')
            # cargo takes a lock in CARGO_HOME even offline
            built = sandbox.run([str(cargo), "build", "--offline", "--quiet"], project, SETUP_LIMITS, env,
                                readable=[self._sysroot], writable=[Path(env["CARGO_HOME"])])
            if built.returncode != 0:
                self._crates_problem = ("cargo could not build rand, regex and md5 offline "
                                        "(apt-get install librust-rand-dev librust-regex-dev librust-md5-dev)")
                logger.warning("rust: %s:\n%s", self._crates_problem, failure_text(built)[-2000:])
                return None
            (project / "built").write_text("")
        externs = ["-L", f"dependency={deps}"]
        for name in self.CRATES:
            rlibs = sorted(deps.glob(f"lib{name}-*.rlib"))
            if not rlibs:
                self._crates_problem = f"no lib{name}-*.rlib in {deps}"
                return None
            externs += ["--extern", f"{name}={rlibs[-1]}"]
        self._crates = deps
        return externs


TOOLCHAINS = {"python": PythonToolchain, "cpp": CppToolchain, "java": JavaToolchain, "js": JavaScriptToolchain,
              "go": GoToolchain, "rust": RustToolchain}


def toolchain_for(language: str) -> Toolchain:
    return TOOLCHAINS[language]()

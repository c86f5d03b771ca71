"""Run samples against their problems' tests, in parallel, and say what happened to each."""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .problems import Problem, Sample
from .sandbox import Limits, Sandbox, make_workdir, remove_tree
from .toolchains import Toolchain, ToolchainMissing, toolchain_for

STATUSES = ("passed", "failed", "timed out", "compile error")
MAX_ERROR_CHARS = 2000

# Problems whose canonical solution cannot be relied on to pass, whatever is installed.
# More become known-bad when an optional library is missing: `Toolchain.known_bad()`.
KNOWN_BAD: dict[str, str] = {
    "JavaScript/112": "the canonical solution returns `(z, false)`, JavaScript's comma operator, "
                      "instead of the array [t, false] the tests expect",
    "JavaScript/155": "the canonical solution counts no digits in 0; the test expects evenOddCount(0) == [1, 0]",
    "Go/95": "the canonical solution's answer depends on Go's randomised map iteration order, "
             "so it fails about one run in three",
    "Rust/50": "its test calls rand 0.4's gen_range(low, high); the rand 0.8 available offline "
               "takes a range",
}


@dataclass
class Verdict:
    task_id: str
    completion_id: int
    status: str                  # one of STATUSES
    error: str = ""              # the end of the compiler's or the program's output when it did not pass
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Evaluation:
    language: str
    verdicts: list[Verdict]
    known_bad: dict[str, str]    # task_id -> reason, for problems that cannot pass here
    protections: list[str]       # what the sandbox enforced


def evaluate(problems: list[Problem], samples: list[Sample], *, limits: Limits = Limits(),
             workers: int | None = None, progress: bool = False) -> Evaluation:
    """Check every sample; raises ToolchainMissing when the language cannot run here."""
    if not problems:
        raise ValueError("no problems to evaluate")
    language = problems[0].language
    if any(p.language != language for p in problems):
        raise ValueError("problems of several languages given to one evaluation; evaluate each language apart")
    by_id = {p.task_id: p for p in problems}
    for sample in samples:
        if sample.task_id not in by_id:
            raise ValueError(f"sample for unknown task {sample.task_id!r}")
    toolchain = toolchain_for(language)
    missing = toolchain.missing()
    if missing:
        raise ToolchainMissing(language, missing)
    workers = workers or os.cpu_count() or 1
    verdicts = []
    with Sandbox() as sandbox, tempfile.TemporaryDirectory(prefix="codegen-eval-") as scratch:
        work = Path(scratch)
        try:
            toolchain.prepare(sandbox, work)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_check, toolchain, sandbox, work, by_id[s.task_id], s, limits)
                           for s in samples]
                for future in _progress(as_completed(futures), len(futures), language, progress):
                    verdicts.append(future.result())
        finally:
            toolchain.close()
        protections = sandbox.protections
    order = {p.task_id: i for i, p in enumerate(problems)}
    verdicts.sort(key=lambda v: (order[v.task_id], v.completion_id))
    known_bad = {task: why for task, why in {**KNOWN_BAD, **toolchain.known_bad()}.items() if task in by_id}
    return Evaluation(language, verdicts, known_bad, protections)


def canonical_samples(problems: list[Problem]) -> list[Sample]:
    """The reference solutions as samples: the harness must pass all of them."""
    return [Sample(p.task_id, 0, p.canonical_solution) for p in problems]


def _check(toolchain: Toolchain, sandbox: Sandbox, work: Path, problem: Problem, sample: Sample,
           limits: Limits) -> Verdict:
    workdir = make_workdir(work)
    try:
        program = toolchain.program(problem, sample.completion)
        (workdir / toolchain.source_name).write_text(program, encoding="utf-8")
        built = toolchain.compile(sandbox, workdir, program)
        seconds = built.seconds if built else 0.0
        if built is not None and built.timed_out:
            return Verdict(sample.task_id, sample.completion_id, "timed out",
                           _tail(f"compilation did not finish in time\n{built.stderr}"), seconds)
        if built is not None and built.returncode != 0:
            return Verdict(sample.task_id, sample.completion_id, "compile error",
                           _tail(built.stderr or built.stdout), seconds)
        ran = toolchain.run(sandbox, workdir, limits)
        seconds += ran.seconds
        if ran.timed_out:
            return Verdict(sample.task_id, sample.completion_id, "timed out",
                           f"did not finish in {limits.timeout:g} s", seconds)
        status, error = toolchain.judge(ran)
        return Verdict(sample.task_id, sample.completion_id, status, _tail(error), seconds)
    finally:
        remove_tree(workdir)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_ERROR_CHARS else "..." + text[-MAX_ERROR_CHARS:]


def _progress(iterable, total: int, language: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=f"executing {language}", unit="sample")

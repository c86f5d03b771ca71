"""Compiled and other non-Python languages on a deterministic subset of HumanEval-X.

The full 164-problem sweeps take minutes per language on two cores, so they are a
command (`codegen eval humaneval-x --language all --canonical --output DIR`), not a test.
Here each language whose toolchain is installed runs: a few canonical solutions chosen
for what they exercise (extra libraries, helper functions, Go's import rewriting), one
known-bad problem that must indeed fail, and wrong, non-compiling, looping and
exit(0)-calling completions of problem 0.
"""
import pytest

from codegen.evaluation.execution import KNOWN_BAD, evaluate
from codegen.evaluation.problems import TASK_PREFIX, Sample, load_humaneval_x
from codegen.evaluation.sandbox import Limits
from codegen.evaluation.toolchains import toolchain_for

CANONICAL = {
    "cpp": [0, 1, 22, 162],            # 22: boost::any, 162: OpenSSL MD5
    "java": [0, 1, 162],               # 162: java.security MD5
    "js": [0, 1, 162],                 # 162: the js-md5 package
    "go": [0, 72, 158, 162],           # 72: a helper function, 158: "strings." only in the comment, 162: crypto/md5
    "rust": [0, 10, 91, 162],          # 10: helper, 91: regex crate, 162: md5 crate
}
KNOWN_BAD_EXAMPLE = {"js": 155, "rust": 50}

# completions of problem 0 (has_close_elements): (completion, expected status)
BROKEN = {
    "cpp": [("    return false;\n}\n", "failed"), ("    return false\n}\n", "compile error"),
            ("    volatile int x = 0;\n    while (true) { x++; }\n}\n", "timed out"),
            ("    exit(0);\n}\n", "failed")],
    "java": [("        return false;\n    }\n}\n", "failed"), ("        return false\n    }\n}\n", "compile error"),
             ("        while (true) {}\n    }\n}\n", "timed out"),
             ("        System.exit(0);\n        return true;\n    }\n}\n", "failed")],
    "js": [("  return false\n}\n", "failed"), ("  return (\n}\n", "compile error"),
           ("  while (true) {}\n}\n", "timed out"), ("  process.exit(0)\n}\n", "failed")],
    "go": [("    return false\n}\n", "failed"), ("    return false +\n}\n", "compile error"),
           ("    for {\n    }\n}\n", "timed out"), ("    os.Exit(0)\n    return true\n}\n", "failed")],
    "rust": [("    false\n}\n", "failed"), ("    false +\n}\n", "compile error"), ("    loop {}\n}\n", "timed out"),
             ("    std::process::exit(0);\n}\n", "failed")],
}


@pytest.mark.parametrize("language", list(CANONICAL))
def test_language_subset(language):
    missing = toolchain_for(language).missing()
    if missing:
        pytest.skip(f"{language} toolchain missing: {missing}")
    problems = load_humaneval_x(language)
    by_number = {p.number: p for p in problems}
    chosen = CANONICAL[language] + ([KNOWN_BAD_EXAMPLE[language]] if language in KNOWN_BAD_EXAMPLE else [])
    samples = [Sample(by_number[n].task_id, 0, by_number[n].canonical_solution) for n in chosen]
    samples += [Sample(by_number[0].task_id, i + 1, completion) for i, (completion, _) in enumerate(BROKEN[language])]
    evaluation = evaluate([by_number[n] for n in sorted(set(chosen))], samples,
                          limits=Limits(timeout=3.0), workers=2)
    verdicts = {(v.task_id, v.completion_id): v for v in evaluation.verdicts}

    for number in CANONICAL[language]:
        task = f"{TASK_PREFIX[language]}/{number}"
        verdict = verdicts[(task, 0)]
        if task in evaluation.known_bad:
            assert task not in KNOWN_BAD, "only optional libraries may be missing for these"
            continue
        assert verdict.status == "passed", (task, verdict.error[-500:])
    if language in KNOWN_BAD_EXAMPLE:
        task = f"{TASK_PREFIX[language]}/{KNOWN_BAD_EXAMPLE[language]}"
        assert task in evaluation.known_bad and not verdicts[(task, 0)].passed
    for i, (_, status) in enumerate(BROKEN[language]):
        verdict = verdicts[(by_number[0].task_id, i + 1)]
        assert verdict.status == status, (i, verdict.status, verdict.error[-500:])
        assert verdict.error


def test_missing_toolchain_is_reported_not_failed(monkeypatch, tmp_path):
    from codegen.evaluation.toolchains import ToolchainMissing
    monkeypatch.setenv("PATH", str(tmp_path))
    problems = load_humaneval_x("js")[:1]
    with pytest.raises(ToolchainMissing, match="node not found"):
        evaluate(problems, [Sample(problems[0].task_id, 0, problems[0].canonical_solution)])


def test_rust_without_crates_lists_the_problems_that_need_them(monkeypatch, tmp_path):
    from codegen.evaluation.toolchains import RustToolchain
    if RustToolchain().missing():
        pytest.skip("rustc missing")
    # no packaged registry and an empty cargo home: cargo cannot fetch anything offline
    monkeypatch.setattr(RustToolchain, "DEBIAN_REGISTRY", tmp_path / "no-registry")
    monkeypatch.setenv("CARGO_HOME", str(tmp_path / "cargo-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    problems = {p.number: p for p in load_humaneval_x("rust")}
    chosen = [problems[0], problems[91]]
    evaluation = evaluate(chosen, [Sample(p.task_id, 0, p.canonical_solution) for p in chosen],
                          limits=Limits(timeout=5.0), workers=2)
    assert set(evaluation.known_bad) == {"Rust/91"}
    assert "regex" in evaluation.known_bad["Rust/91"]
    assert [v.status for v in evaluation.verdicts] == ["passed", "compile error"]

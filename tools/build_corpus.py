"""Build the training corpus for the small shipped model from the Python standard library.

The standard library (PSF license) of the interpreter running this script is
cleaned and split into whole files for training and a fixed set of held-out
modules for validation. From the held-out modules we also take function
signatures with docstrings as prompts for the quality benchmark.

    python tools/build_corpus.py --out /tmp/corpus

writes, in --out:
    train.jsonl, validation.jsonl   one {"code": ..., "path": ...} per line
    heldout_functions.jsonl         {"prompt", "path", "name", "qualname", "reference_body"}
    stats.json                      what was kept and dropped, and why

Stdlib only, so it runs with any Python 3.10+ without the project installed.
"""
import argparse
import ast
import hashlib
import io
import json
import os
import platform
import re
import sys
import sysconfig
import time
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path

# Validation modules, never trained on. Chosen by hand for variety (text, maths,
# parsing, networking, concurrency, data formats) among modules present in every
# Python from 3.10 on; a module missing from some version is just left out.
HELDOUT_MODULES = (
    "asyncio/queues.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "concurrent/futures/thread.py",
    "csv.py",
    "difflib.py",
    "email/quoprimime.py",
    "filecmp.py",
    "fnmatch.py",
    "fractions.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "heapq.py",
    "html/parser.py",
    "http/cookies.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/handlers.py",
    "mimetypes.py",
    "pprint.py",
    "queue.py",
    "reprlib.py",
    "sched.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "urllib/parse.py",
    "wsgiref/headers.py",
)
HELDOUT_FUNCTION_COUNT = 100
# a completion benchmark on a CPU cannot wait for very long functions
MAX_REFERENCE_BODY_LINES = 40

TEST_DIRS = {"test", "tests", "idle_test"}
MAX_FILE_BYTES = 200_000
MAX_LINE_CHARS = 1000
MAX_NUMERIC_SHARE = 0.25
HEADER_LINES_CHECKED = 5

# Markers of machine-written modules (Sphinx dumps, build-time config, token
# lists) and of charmap codec tables, nearly all made by gencodec.py (but not the
# generic "Character Mapping Codec." module, which is code): looked for in the
# first few lines only, where tools put them.
GENERATED_MARKER = re.compile(
    r"auto-?generated|automatically generated|this file is generated|character mapping codec \w"
    r"|configuration generated and used", re.IGNORECASE)
# Numeric literals and escapes: what makes a lookup table look like a table.
NUMERIC_TOKEN = re.compile(
    r"\b0[xX][0-9a-fA-F_]+\b|\b\d[\d_]*\b|\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}")
LICENSE_WORDS = re.compile(r"copyright|licen[cs]e", re.IGNORECASE)
# Path-based reasons: their paths are not listed one by one in stats.json.
BULK_REASONS = ("site_packages", "tests")


@dataclass
class SourceFile:
    path: str  # relative to the stdlib root, "/"-separated
    code: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: Path) -> list[str]:
    """Every .py file under root as a sorted relative path, so all later choices are deterministic."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        relative = Path(directory).relative_to(root)
        found.extend((relative / name).as_posix() for name in files if name.endswith(".py"))
    return sorted(found)


def path_drop_reason(path: str) -> str | None:
    *directories, name = path.split("/")
    if "site-packages" in directories:
        return "site_packages"
    if TEST_DIRS.intersection(directories) or name.startswith("test_"):
        return "tests"
    return None


def read_source(file: Path) -> str:
    """Decode as Python would (coding cookie, BOM) and use "\\n" line endings."""
    raw = file.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    text = raw.decode(encoding)
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def numeric_share(text: str) -> float:
    visible = sum(not c.isspace() for c in text)
    if not visible:
        return 0.0
    return sum(len(m.group()) for m in NUMERIC_TOKEN.finditer(text)) / visible


def parses(text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like are fine
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            return False
    return True


def content_drop_reason(text: str) -> str | None:
    lines = text.split("\n")
    if any(GENERATED_MARKER.search(line) for line in lines[:HEADER_LINES_CHECKED]):
        return "generated"
    if max(map(len, lines)) > MAX_LINE_CHARS:
        return "long_lines"
    if numeric_share(text) > MAX_NUMERIC_SHARE:
        return "data_like"
    if not parses(text):
        return "syntax_error"
    return None


def strip_license_header(text: str) -> tuple[str, bool]:
    """Drop the leading comment block when it is a copyright/license notice.

    Docstrings stay even when they mention a copyright: they are code."""
    lines = text.split("\n")
    end = 0
    while end < len(lines) and (not lines[end].strip() or lines[end].lstrip().startswith("#")):
        end += 1
    header = "\n".join(lines[:end])
    if not LICENSE_WORDS.search(header):
        return text, False
    return "\n".join(lines[end:]), True


def duplicate_key(text: str) -> str:
    """Equal for files that differ only in whitespace, so near copies count as duplicates."""
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()


def clean_stdlib(root: Path) -> tuple[list[SourceFile], dict[str, list[str]], int]:
    """Returns the kept files, dropped paths by reason and how many license headers were stripped."""
    kept: list[SourceFile] = []
    dropped: dict[str, list[str]] = {}
    seen_keys: set[str] = set()
    headers_stripped = 0
    for path in python_files(root):
        file = root / path
        reason = path_drop_reason(path)
        if reason is None and file.stat().st_size > MAX_FILE_BYTES:
            reason = "too_large"
        if reason is None:
            try:
                text = read_source(file)
            except (SyntaxError, LookupError, UnicodeDecodeError):  # bad cookie, unknown codec, bad bytes
                reason = "undecodable"
        if reason is None:
            reason = content_drop_reason(text)
        if reason is None:
            text, stripped = strip_license_header(text)
            text = text.strip("\n") + "\n"
            key = duplicate_key(text)
            if text == "\n":
                reason = "empty"
            elif key in seen_keys:
                reason = "duplicate"
            else:
                seen_keys.add(key)
                headers_stripped += stripped
                kept.append(SourceFile(path, text))
        if reason is not None:
            dropped.setdefault(reason, []).append(path)
    return kept, dropped, headers_stripped


def split_heldout(files: list[SourceFile]) -> tuple[list[SourceFile], list[SourceFile]]:
    heldout = set(HELDOUT_MODULES)
    train = [f for f in files if f.path not in heldout]
    validation = [f for f in files if f.path in heldout]
    return train, validation


def _dedent(lines: list[str], indent: int) -> list[str]:
    # Lines inside a docstring may be indented less than the def; strip what they have.
    return [line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines]


def _function_record(source: SourceFile, lines: list[str], node: ast.AST, qualname: str) -> dict | None:
    """The function as a prompt (signature + docstring) and its reference body, or None if unsuitable."""
    if ast.get_docstring(node, clean=False) is None or len(node.body) < 2:
        return None
    docstring = node.body[0]
    if lines[docstring.end_lineno - 1][docstring.end_col_offset:].strip():
        return None  # code after the docstring on its line: no clean place to cut
    prompt_lines = _dedent(lines[node.lineno - 1:docstring.end_lineno], node.col_offset)
    body_lines = _dedent(lines[docstring.end_lineno:node.end_lineno], node.col_offset)
    if len(body_lines) > MAX_REFERENCE_BODY_LINES:
        return None
    prompt = "\n".join(prompt_lines) + "\n"
    body = "\n".join(body_lines) + "\n"
    if not parses(prompt + body):
        return None
    return {"prompt": prompt, "path": source.path, "name": node.name, "qualname": qualname,
            "reference_body": body, "line": node.lineno}


def function_candidates(source: SourceFile) -> list[dict]:
    """Module-level functions and methods of module-level classes that have a docstring and a body."""
    tree = ast.parse(source.code)
    lines = source.code.split("\n")
    function_types = (ast.FunctionDef, ast.AsyncFunctionDef)
    records = []
    for node in tree.body:
        if isinstance(node, function_types):
            records.append(_function_record(source, lines, node, node.name))
        elif isinstance(node, ast.ClassDef):
            records.extend(_function_record(source, lines, method, f"{node.name}.{method.name}")
                           for method in node.body if isinstance(method, function_types))
    return [r for r in records if r is not None]


def heldout_functions(validation: list[SourceFile], count: int = HELDOUT_FUNCTION_COUNT) -> list[dict]:
    """`count` functions spread over the held-out modules, picked by a stable hash, in file order."""
    candidates = [r for source in validation for r in function_candidates(source)]

    def stable_rank(record: dict) -> str:
        return hashlib.sha1(f"{record['path']}:{record['line']}".encode()).hexdigest()

    chosen = sorted(candidates, key=stable_rank)[:count]
    return sorted(chosen, key=lambda r: (r["path"], r["line"]))


def write_jsonl(path: Path, records: list[dict]) -> int:
    """Returns the file size. ASCII-escaped JSON, so no line separator can hide inside a record."""
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path.stat().st_size


def split_stats(files: list[SourceFile], jsonl_bytes: int) -> dict:
    return {"records": len(files),
            "characters": sum(len(f.code) for f in files),
            "utf8_bytes": sum(len(f.code.encode("utf-8")) for f in files),
            "lines": sum(f.code.count("\n") for f in files),
            "jsonl_bytes": jsonl_bytes}


def build_corpus(root: Path, out: Path) -> dict:
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory not found: {root}")
    out.mkdir(parents=True, exist_ok=True)
    kept, dropped, headers_stripped = clean_stdlib(root)
    train, validation = split_heldout(kept)
    functions = heldout_functions(validation)
    splits = {}
    for name, files in (("train", train), ("validation", validation)):
        size = write_jsonl(out / f"{name}.jsonl", [{"code": f.code, "path": f.path} for f in files])
        splits[name] = split_stats(files, size)
    write_jsonl(out / "heldout_functions.jsonl", functions)
    validation_paths = {f.path for f in validation}
    stats = {
        "python_version": platform.python_version(),
        "stdlib": str(root),
        "files_seen": len(kept) + sum(map(len, dropped.values())),
        "files_kept": len(kept),
        "dropped": {reason: len(paths) for reason, paths in sorted(dropped.items())},
        "dropped_paths": {reason: paths for reason, paths in sorted(dropped.items()) if reason not in BULK_REASONS},
        "license_headers_stripped": headers_stripped,
        "splits": splits,
        "heldout_modules": sorted(validation_paths),
        "heldout_modules_missing": sorted(set(HELDOUT_MODULES) - validation_paths),
        "heldout_functions": len(functions),
        "rules": {"test_dirs": sorted(TEST_DIRS), "max_file_bytes": MAX_FILE_BYTES,
                  "max_line_chars": MAX_LINE_CHARS, "max_numeric_share": MAX_NUMERIC_SHARE,
                  "generated_marker": GENERATED_MARKER.pattern,
                  "max_reference_body_lines": MAX_REFERENCE_BODY_LINES},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the jsonl files and stats.json")
    parser.add_argument("--stdlib", type=Path, default=stdlib_root(),
                        help="standard library to read (default: the running interpreter's)")
    args = parser.parse_args(argv)
    stats = build_corpus(args.stdlib, args.out)
    summary = {key: stats[key] for key in ("python_version", "files_kept", "dropped", "heldout_functions", "seconds")}
    summary["splits"] = stats["splits"]
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

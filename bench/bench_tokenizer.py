"""Encode/decode speed of codegen.tokenizer against Hugging Face's CodeGen tokenizers.

    /tmp/refvenv/bin/python bench/bench_tokenizer.py [--slow-python /path/to/python] [--write bench/tokenizer.md]

Times encoding one ~2,000-token Python file from the standard library (the module whose CodeGen length is
closest to 2,000 tokens), decoding its ids, and building the tokenizer. Implementations, all in this run:
- ours: codegen.tokenizer.codegen_tokenizer()
- hf CodeGenTokenizer / CodeGenTokenizerFast from the transformers of this interpreter (in transformers 5 both
  names are the Rust-backed tokenizer; in 4.x CodeGenTokenizer is pure Python)
- with --slow-python, the same measurements of transformers' CodeGenTokenizer run by another interpreter, e.g. a
  venv made with `python -m venv /tmp/refvenv4 && /tmp/refvenv4/bin/pip install transformers==4.46.3` (no torch
  needed), whose CodeGenTokenizer is the pure-Python one.
Every implementation must produce the same ids. Prints one JSON line per measurement.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "codegen" / "assets" / "tokenizers"
TARGET_TOKENS = 2000
sys.path.insert(0, str(REPO))  # run from a checkout without installing; codegen.tokenizer needs no paddle


def pick_file() -> Path:
    from codegen.tokenizer import codegen_tokenizer
    tok = codegen_tokenizer()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = sorted(stdlib.glob("*.py"))
    lengths = tok.encode_batch([p.read_text(encoding="utf-8", errors="replace") for p in candidates])
    return min(zip(candidates, lengths), key=lambda c: abs(len(c[1]) - TARGET_TOKENS))[0]


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def hf_reference_dir(workdir: Path) -> Path:
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(ASSETS / "gpt2-bpe" / name, workdir / name)
    shutil.copyfile(ASSETS / "codegen" / "added_tokens.json", workdir / "added_tokens.json")
    return workdir


def implementations(which: str):
    """(name, build) pairs; build() returns an object with encode(text) and decode(ids)."""
    if which == "ours":
        from codegen.tokenizer import codegen_tokenizer
        return [("ours", codegen_tokenizer)]
    import transformers
    workdir = Path(tempfile.mkdtemp())
    hf_reference_dir(workdir)
    found = []
    for class_name in ("CodeGenTokenizer", "CodeGenTokenizerFast"):
        cls = getattr(transformers, class_name, None)
        if cls is None:
            continue
        probe = cls.from_pretrained(str(workdir))
        kind = "rust" if getattr(probe, "is_fast", False) else "python"
        label = f"transformers {transformers.__version__} {class_name} ({kind})"
        if cls.__name__ != class_name:
            label += f" = {cls.__name__}"
        found.append((label, lambda cls=cls: cls.from_pretrained(str(workdir))))
    return found


def measure(which: str, path: Path, repeat: int, builds: int) -> list[dict]:
    """Cold = first call on a freshly built tokenizer (its word caches are empty); warm = the same call again."""
    text = path.read_text(encoding="utf-8")
    rows = []
    for name, build in implementations(which):
        times = {op: [] for op in ("build", "encode cold", "decode cold")}
        for _ in range(builds):
            start = time.perf_counter()
            tok = build()
            built = time.perf_counter()
            ids = list(tok.encode(text))
            encoded = time.perf_counter()
            tok.decode(ids)
            times["build"].append(built - start)
            times["encode cold"].append(encoded - built)
            times["decode cold"].append(time.perf_counter() - encoded)
        times["encode warm"] = timed(lambda: tok.encode(text), repeat)
        times["decode warm"] = timed(lambda: tok.decode(ids), repeat)
        for op, samples in times.items():
            rows.append({"impl": name, "op": op, "ms_median": round(1000 * statistics.median(samples), 3),
                         "ms_min": round(1000 * min(samples), 3), "runs": len(samples), "tokens": len(ids),
                         "ids_sha256": hashlib.sha256(repr(ids).encode()).hexdigest()[:16]})
    return rows


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    import tokenizers
    try:
        import transformers
        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    return {"cpu": fields.get("Model name", "?").strip(), "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "tokenizers": tokenizers.__version__, "transformers": transformers_version,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="warm runs per implementation")
    parser.add_argument("--builds", type=int, default=5, help="fresh tokenizers per implementation (cold runs)")
    parser.add_argument("--slow-python", help="another interpreter whose transformers has the Python CodeGenTokenizer")
    parser.add_argument("--write", type=Path, help="write a markdown report here (e.g. bench/tokenizer.md)")
    parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # measuring for another interpreter's parent run
        for row in measure(args.worker, args.file, args.repeat, args.builds):
            print(json.dumps(row))
        return

    path = pick_file()
    about = machine()
    print(json.dumps({"machine": about, "file": str(path)}))
    rows = measure("ours", path, args.repeat, args.builds) + measure("hf", path, args.repeat, args.builds)
    if args.slow_python:
        out = subprocess.run([args.slow_python, __file__, "--worker", "hf", "--file", str(path),
                              "--repeat", str(args.repeat), "--builds", str(args.builds)],
                             capture_output=True, text=True, check=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for row in rows:
        print(json.dumps(row))
    if len({r["ids_sha256"] for r in rows}) != 1:
        raise SystemExit("implementations disagree on the ids: "
                         f"{ {r['impl']: r['ids_sha256'] for r in rows} }")
    if args.write:
        args.write.write_text(report(about, path, rows))


def report(about: dict, path: Path, rows: list[dict]) -> str:
    ours = {r["op"]: r["ms_median"] for r in rows if r["impl"] == "ours"}
    lines = [
        "# Tokenizer speed",
        "",
        f"Encode one Python file of {rows[0]['tokens']} CodeGen tokens (`{path.name}` from the Python "
        f"{about['python']} standard library), decode its ids, and build the tokenizer. Medians; all "
        f"implementations produced the same ids. Produced by `bench/bench_tokenizer.py`.",
        "",
        f"- Machine: {about['cpu']}, {about['cores']} cores (shared; load average at start "
        f"{', '.join(map(str, about['load_average']))}), {about['date']}",
        f"- Python {about['python']}, tokenizers {about['tokenizers']}, transformers {about['transformers']}",
        "",
        "Cold: the first call on a freshly built tokenizer (empty word caches); warm: the same call repeated.",
        "",
        "| implementation | encode cold ms | encode warm ms | decode cold ms | decode warm ms | build ms "
        "| encode cold vs ours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["impl"] for r in rows):
        ms = {r["op"]: r["ms_median"] for r in rows if r["impl"] == name}
        lines.append(f"| {name} | {ms['encode cold']:.1f} | {ms['encode warm']:.2f} | {ms['decode cold']:.1f} | "
                     f"{ms['decode warm']:.2f} | {ms['build']:.0f} | {ms['encode cold'] / ours['encode cold']:.2f}x |")
    lines += [
        "",
        f"Command: `{' '.join(['python', 'bench/bench_tokenizer.py', *sys.argv[1:]])}`",
        "",
        "Notes:",
        "- ours and transformers' Rust-backed classes run the same `tokenizers` BPE, so their encode times are "
        "the same within noise. transformers 5 has no pure-Python CodeGen tokenizer (both class names are the "
        "Rust-backed one); the pure-Python `CodeGenTokenizer` is measured in a transformers 4.x interpreter "
        "given with `--slow-python` (a venv with `pip install transformers==4.46.3`).",
        "- Our cold decode includes building the id -> bytes table, once per tokenizer, on first decode.",
        "- transformers 4.x decode puts spaces around added tokens (CodeGen's whitespace tokens) unless "
        "`spaces_between_special_tokens=False`; ours and transformers 5 give back the exact text.",
        "- The machine is shared by parallel jobs: expect run-to-run swings of tens of percent; compare rows "
        "of one run.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

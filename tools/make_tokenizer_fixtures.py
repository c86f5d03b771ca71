"""Write the tokenizer test fixtures from Hugging Face's tokenizers (dev tool; needs transformers).

    /tmp/refvenv/bin/python tools/make_tokenizer_fixtures.py [--out DIR] [--stdlib DIR] [--humaneval-x DIR]

The references are built from the same data files codegen ships (codegen/assets/tokenizers):
- CodeGen: transformers' CodeGenTokenizer loaded from a directory holding vocab.json, merges.txt and
  CodeGen's added_tokens.json, the layout Salesforce publishes.
- CodeGeeX: transformers' GPT2Tokenizer loaded from CodeGeeX's published files, applied to the text after
  CodeGeeX's whitespace rewrite (written here independently, the way THUDM's code does it: walk the text
  and flush a token every ten spaces and at the end of each run).

Outputs under --out (default tests/fixtures/tokenizer/):
- reference.json: full id lists of both families for hand-picked tricky strings, seeded random strings and a
  few HumanEval-X prompts, plus decode-with-truncation cases.
- stdlib.json.gz: for every .py file of the standard library (site-packages excluded), hashes of its bytes
  and of each family's id list. Files that are not UTF-8 are read as Latin-1.
- humaneval_x.json.gz: the same hashes for every HumanEval-X prompt of the six languages.
Running it with transformers 4.x (a Python CodeGenTokenizer) or 5.x (Rust-backed) must give the same files
apart from the "reference" block that names the version.
"""
import argparse
import datetime
import gzip
import hashlib
import json
import platform
import random
import shutil
import sys
import sysconfig
import tempfile
from array import array
from pathlib import Path

import transformers
from transformers import CodeGenTokenizer, GPT2Tokenizer

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "codegen" / "assets" / "tokenizers"
LANGUAGES = ("python", "cpp", "java", "js", "go", "rust")


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def ids_hash(ids: list[int]) -> str:
    packed = array("i", ids)  # 4-byte ints, hashed little-endian
    if sys.byteorder == "big":
        packed.byteswap()
    return short_hash(packed.tobytes())


def read_source(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def codegeex_spaces(text: str) -> str:
    """CodeGeeX's rewrite: each run of n spaces, 2 <= n <= 10, becomes <|extratoken_{8+n}|>."""
    out, run = [], 0

    def flush():
        if run == 1:
            out.append(" ")
        elif run > 1:
            out.append(f"<|extratoken_{8 + run}|>")

    for ch in text:
        if ch == " ":
            run += 1
            if run == 10:
                flush()
                run = 0
        else:
            flush()
            run = 0
            out.append(ch)
    flush()
    return "".join(out)


class References:
    def __init__(self, workdir: Path):
        codegen_dir, codegeex_dir = workdir / "codegen", workdir / "codegeex"
        for d in (codegen_dir, codegeex_dir):
            d.mkdir()
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(ASSETS / "gpt2-bpe" / name, d / name)
        shutil.copyfile(ASSETS / "codegen" / "added_tokens.json", codegen_dir / "added_tokens.json")
        for name in ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
            shutil.copyfile(ASSETS / "codegeex" / name, codegeex_dir / name)
        self.codegen = CodeGenTokenizer.from_pretrained(str(codegen_dir))
        self.codegeex = GPT2Tokenizer.from_pretrained(str(codegeex_dir))
        assert len(self.codegen) == 50295 and len(self.codegeex) == 50400, (len(self.codegen), len(self.codegeex))

    def encode(self, family: str, texts: list[str]) -> list[list[int]]:
        if family == "codegen":
            return [self.codegen.encode(t, add_special_tokens=False) for t in texts]
        return [self.codegeex.encode(codegeex_spaces(t), add_special_tokens=False) for t in texts]


def tricky_strings() -> list[str]:
    texts = [
        "def f():\n    return 1\n",
        "def f():\r\n    return 1\r\n",
        "class A:\n\tdef g(self):\n\t\treturn self\n",
        "\tx", "\t\ty", "\t" * 9, "\t" * 10 + "z", "\t" * 20, "  \t  \t\t    x", "\t    \t", " \t", "\t ",
        "\n\n\n", "\n \n  \n   \n", "\r", "\r\r\n", "\x0b\x0c x", " \n ", "x \n", "x  \n  y",
        "😀 héllo", "数据 = '中文'  # 注释", "Ω≈ç√∫", "e\u0301", "👨\u200d👩\u200d👧", "\u00a0\u00a0x",
        "\u3000\u3000y", "\u2003 \u2003", "\u2028", "\x00\x01\x7f", "\ufeffimport os", "ÿþ", "\u00ad",
        "<|endoftext|>", "x<|endoftext|>y", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
        "  <|endoftext|>   ", "<|endoftext|", "<|endoftext|>\n    def", "< |endoftext|>", "<|ENDOFTEXT|>",
        "<|extratoken_12|>", "a<|extratoken_1|>b", "<|extratoken_143|><|extratoken_144|>", "<|extratoken_9|>",
        "don't 's 'll 've 're 'd 'm  's", "1234567890 3.14159e-10", "a" * 300, "__init__(self, *args, **kw)",
        "", " ", "x", " x", "  x", "x ", "x  ",
    ]
    for n in (1, 2, 3, 9, 10, 11, 12, 19, 20, 21, 29, 30, 31, 32, 33, 40, 61, 62, 63, 64, 100):
        texts += [" " * n, "x" + " " * n + "y", " " * n + "def f", "a\n" + " " * n + "\n"]
    return texts


def random_strings(count: int, seed: int = 0) -> list[str]:
    pieces = [" ", " ", " ", "\t", "\n", "\r\n", "a", "Z", "é", "😀", "中", "_", "1", "'", "'s", "#", "(", ")",
              "def", " if", "<|endoftext|>", "<|extratoken_12|>", "\u00a0", "\x00", "<", "|", ">", "return"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))) for _ in range(count)]


def humaneval_x_prompts(directory: Path) -> dict[str, list[tuple[str, str]]]:
    prompts = {}
    for language in LANGUAGES:
        with gzip.open(directory / f"humaneval_{language}.jsonl.gz", "rt", encoding="utf-8") as f:
            prompts[language] = [(row["task_id"], row["prompt"]) for row in map(json.loads, f)]
    return prompts


TRUNCATION_COMPLETION = (
    "    return x + 1\n\nprint(f(1))\nprint(f(2))\n\ndef g():\n    pass\n\n\n\ndef h():\n    # note\n"
    "    return 2\n'''doc'''\n<|endoftext|>tail\n#comment at column 0\n"
)
TRUNCATION_PATTERNS = [
    ["^#", "<\\|endoftext\\|>", "^'''", "\n\n\n"],
    ["\n\n\n"],
    ["^'''"],
    ["no such text"],
    ["^    #"],
    ["<\\|endoftext\\|>"],
    [],
]


def truncation_cases(ref: References) -> list[dict]:
    completions = [TRUNCATION_COMPLETION, TRUNCATION_COMPLETION.replace("print", "printf"),
                   "def a():\n  return 1\ndef b():\n  return 2\n", "x = 1\n#done\n", "    pass\n"]
    cases = []
    for text in completions:
        ids = ref.codegen.encode(text, add_special_tokens=False)
        # transformers 4.x puts spaces around added tokens unless told not to
        plain = {"spaces_between_special_tokens": False}
        assert ref.codegen.decode(ids, **plain) == text
        for patterns in TRUNCATION_PATTERNS:
            cases.append({"ids": ids, "patterns": patterns,
                          "expected": ref.codegen.decode(ids, truncate_before_pattern=patterns, **plain)})
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "tokenizer")
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--humaneval-x", type=Path, default=REPO / "codegen" / "assets" / "humaneval-x")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        ref = References(Path(tmp))
    about = {"transformers": transformers.__version__, "codegen_class": type(ref.codegen).__name__,
             "codegen_is_python": not getattr(ref.codegen, "is_fast", True),
             "date": datetime.date.today().isoformat()}

    prompts = humaneval_x_prompts(args.humaneval_x)
    texts = tricky_strings() + random_strings(300)
    texts += [prompt for language in LANGUAGES for _, prompt in prompts[language][:2]]
    strings = [{"text": t, "codegen": a, "codegeex": b}
               for t, a, b in zip(texts, ref.encode("codegen", texts), ref.encode("codegeex", texts))]
    reference = {"reference": about, "strings": strings, "truncation": truncation_cases(ref)}
    (args.out / "reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"reference.json: {len(strings)} strings, {len(reference['truncation'])} truncation cases", flush=True)

    rows = {}
    for language in LANGUAGES:
        tasks = [task for task, _ in prompts[language]]
        texts = [prompt for _, prompt in prompts[language]]
        for task, text, a, b in zip(tasks, texts, ref.encode("codegen", texts), ref.encode("codegeex", texts)):
            rows[task] = [short_hash(text.encode("utf-8")), ids_hash(a), ids_hash(b)]
    write_gz(args.out / "humaneval_x.json.gz", {"reference": about, "columns": COLUMNS, "prompts": rows})
    print(f"humaneval_x.json.gz: {len(rows)} prompts", flush=True)

    paths = sorted(p for p in args.stdlib.rglob("*.py") if p.relative_to(args.stdlib).parts[0] != "site-packages")
    files = {}
    for i, path in enumerate(paths):
        text = read_source(path)
        (a,), (b,) = ref.encode("codegen", [text]), ref.encode("codegeex", [text])
        files[path.relative_to(args.stdlib).as_posix()] = [short_hash(path.read_bytes()), ids_hash(a), ids_hash(b)]
        if i % 200 == 0:
            print(f"stdlib {i}/{len(paths)}", flush=True)
    write_gz(args.out / "stdlib.json.gz", {"reference": about, "python": platform.python_version(),
                                            "columns": COLUMNS, "files": files})
    print(f"stdlib.json.gz: {len(files)} files of Python {platform.python_version()} ({sys.executable})")


COLUMNS = ["sha256[:16] of the UTF-8 text or file bytes",
           "sha256[:16] of the codegen ids as little-endian int32", "same for codegeex"]


def write_gz(path: Path, obj):
    # mtime=0 keeps the file byte-identical between runs with the same content
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(obj, sort_keys=True).encode("utf-8"))


if __name__ == "__main__":
    main()

"""Quality and load time of the shipped default model, with peers (e.g. its untrained start) in the same run.

    python tools/build_corpus.py --out /tmp/corpus
    python bench/bench_default_model.py --corpus /tmp/corpus --peer /tmp/init --examples bench/default_model_examples.md

For each model (the default first, then each --peer), one JSON line with:
- `validation`: negative log-likelihood of the held-out modules (validation.jsonl) per token, per-token
  perplexity and bits per UTF-8 byte (comparable across tokenizers), in windows of the model's context
  with half-window strides, each file starting after end-of-text;
- `functions`: for the 100 held-out function signatures with docstrings, the share whose completion,
  cut by the default stop rules (the stop strings and truncation `codegen eval` uses for Python), gives
  a function that parses with `ast` and has at least one statement after its docstring (the prompt
  alone parses: an empty completion does not count), once with Taskflow's default decoding (sampling,
  temperature 0.6, top-k 5, repetition penalty 1.1, seed 0) and once greedy, with at most
  --max-new-tokens tokens;
- `load_s`: a fresh interpreter's `Predictor(model)` time (imports excluded), the median of 3; `cold_s`:
  the same process's import + load + first greedy completion of 16 tokens.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from codegen.checkpoints import load_model  # noqa: E402
from codegen.evaluation import stop_sequences, truncate_completion  # noqa: E402
from codegen.evaluation.perplexity import score_tokens  # noqa: E402
from codegen.predictor import DEFAULT_MODEL, Predictor  # noqa: E402
from codegen.taskflow import CodeGenerationTask  # noqa: E402

EXAMPLE_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'def is_palindrome(s):\n    """Return True if s reads the same forwards and backwards."""\n',
    'def read_lines(path):\n    """Return the lines of the text file at path, without line endings."""\n',
    'class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self):\n',
]

LOAD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from codegen.predictor import Predictor
from codegen.generation import GenerationConfig
t1 = time.perf_counter()
predictor = Predictor(sys.argv[1])
t2 = time.perf_counter()
predictor.generate(["def add(a, b):\\n"], GenerationConfig(max_new_tokens=16, decode_strategy="greedy_search"))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cold_s": t3 - t0}))
"""


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_times(model: str) -> dict:
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, model], capture_output=True, text=True,
                             check=True, cwd=REPO)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def validation_scores(predictor: Predictor, records: list[dict]) -> dict:
    window = predictor.context_length
    nll = tokens = 0
    utf8_bytes = 0
    for record in records:
        ids = predictor.tokenizer.encode(record["code"])
        file_nll, count = score_tokens(predictor.model, ids, window, window // 2, predictor.tokenizer.eos_token_id)
        nll, tokens, utf8_bytes = nll + file_nll, tokens + count, utf8_bytes + len(record["code"].encode())
    return {"files": len(records), "tokens": tokens, "utf8_bytes": utf8_bytes, "nll_per_token": nll / tokens,
            "perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / utf8_bytes}


def complete(predictor: Predictor, config, prompts: list[str], batch_size: int = 10) -> list[tuple[str, str]]:
    """(completion cut by the default stop rules, finish reason) per prompt."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        for prompt, sequences in zip(batch, predictor.generate(batch, config)):
            text = truncate_completion("python", sequences[0].text, starts_line=prompt.endswith("\n"))
            out.append((text, sequences[0].finish_reason))
    return out


def has_body(code: str) -> bool:
    """The code parses and its function has a statement after the docstring: a prompt's signature and
    docstring parse on their own, so an empty completion must not count."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    function = tree.body[0] if tree.body else None
    return isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(function.body) >= 2


def function_scores(predictor: Predictor, config, functions: list[dict]) -> dict:
    prompts = [f["prompt"] for f in functions]
    results = complete(predictor, config, prompts)
    ok = [has_body(p + c) for p, (c, _) in zip(prompts, results)]
    prompt_alone = sum(has_body(p) for p in prompts)
    if prompt_alone:
        raise ValueError(f"{prompt_alone} prompts already have a body: the measure would count them")
    return {"parse_rate": sum(ok) / len(ok), "n": len(ok),
            "stopped_by_length": sum(reason == "length" for _, reason in results),
            "empty": sum(not c.strip() for c, _ in results)}


def decoding_configs(max_new_tokens: int) -> dict:
    # Taskflow's defaults, taken from the task itself so the bench follows them
    taskflow = CodeGenerationTask.__init__.__kwdefaults__
    sampling = {"decode_strategy": "sampling", "temperature": taskflow["temperature"], "top_k": taskflow["top_k"],
                "top_p": taskflow["top_p"], "repetition_penalty": taskflow["repetition_penalty"], "seed": 0}
    from codegen.generation import GenerationConfig
    base = GenerationConfig(max_new_tokens=max_new_tokens, stop=stop_sequences("python"))
    return {"taskflow_default": replace(base, **sampling), "greedy": replace(base, decode_strategy="greedy_search")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="output directory of tools/build_corpus.py")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--peer", action="append", default=[], help="another model to measure in the same run")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--examples", type=Path, help="write the default model's completions of "
                                                      "EXAMPLE_PROMPTS (Taskflow defaults) to this markdown file")
    args = parser.parse_args()
    validation = read_jsonl(args.corpus / "validation.jsonl")
    functions = read_jsonl(args.corpus / "heldout_functions.jsonl")
    configs = decoding_configs(args.max_new_tokens)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                      "date": time.strftime("%Y-%m-%d"), "cores": __import__("os").cpu_count()}), flush=True)
    for model in [args.model, *args.peer]:
        predictor = Predictor(model)
        # counted on the checkpoint: the fast model keeps its Linear weights as buffers
        parameters = sum(math.prod(p.shape) for p in load_model(predictor.model_dir).parameters())
        row = {"model": model, "parameters": parameters,
               **load_times(model), "validation": validation_scores(predictor, validation),
               "functions": {name: function_scores(predictor, config, functions) for name, config in configs.items()}}
        print(json.dumps(row), flush=True)
        if args.examples and model == args.model:
            completions = complete(predictor, configs["taskflow_default"], EXAMPLE_PROMPTS)
            blocks = [f"```python\n{prompt}{text}\n```" for prompt, (text, _) in zip(EXAMPLE_PROMPTS, completions)]
            args.examples.write_text(
                f"Completions of `{model}` with Taskflow's default decoding (seed 0) and the default stop rules, "
                f"at most {args.max_new_tokens} new tokens; written by bench/bench_default_model.py, not edited. "
                f"The prompt is everything up to the end of the docstring or `__init__` line.\n\n"
                + "\n\n".join(blocks) + "\n")


if __name__ == "__main__":
    main()

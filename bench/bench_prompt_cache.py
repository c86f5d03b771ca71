"""Time to first token with and without prompt-cache reuse, as an editor drives the server.

    .venv/bin/python bench/bench_prompt_cache.py [--model DIR] [--rounds 6]

An editor resends nearly the same prompt on every keystroke. This starts codegen_server.py twice on
the same model, once with --prompt-cache-entries 4 and once with 0, and sends it a 1,500-token
prompt, then `rounds` prompts that each extend the previous one by a few characters (one or two
tokens), streamed like Copilot. It reports the median time from sending a request to its first
`data:` event over the extending rounds (the first, cold, prompt is reported apart). Without
--model it uses a randomly initialised CodeGen of moderate size with 2,048 positions.
"""
import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server_load import REPO, ServerProcess, make_random_codegen  # noqa: E402

PROMPT_TOKENS = 1500
TYPED = "    total = sum(len(line) for line in lines if line.strip())\n"
CHARS_PER_KEYSTROKE = 3


def base_prompt(tokenizer) -> str:
    """The first PROMPT_TOKENS tokens of a standard-library module: real code of a realistic length."""
    source = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()
    return tokenizer.decode(tokenizer.encode(source)[:PROMPT_TOKENS])


def time_to_first_event(http: httpx.Client, base: str, prompt: str) -> float:
    body = {"prompt": prompt, "suffix": "", "max_tokens": 8, "temperature": 0, "n": 1, "stream": True,
            "nwo": "bench/prompt-cache", "extra": {"language": "python"}}
    start = time.perf_counter()
    with http.stream("POST", base + "/v1/engines/codegen/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                return time.perf_counter() - start
    raise RuntimeError("the stream ended without an event")


def measure(model: Path, cache_entries: int, prompts: list[str]) -> list[float]:
    with ServerProcess(model, "--prompt-cache-entries", str(cache_entries)) as base, \
            httpx.Client(timeout=600) as http:
        time_to_first_event(http, base, "import os\n")   # one-time costs out of the way
        return [time_to_first_event(http, base, prompt) for prompt in prompts]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: a random CodeGen, 8 layers x 512)")
    parser.add_argument("--rounds", type=int, default=6, help="keystrokes after the first prompt")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    sys.path.insert(0, str(REPO))
    from codegen.checkpoints import read_config
    from codegen.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_random_codegen(
            Path(tmp) / "random-codegen-512x8", n_positions=2048, n_embd=512, n_layer=8, n_head=8, rotary_dim=32)
        config = read_config(model)
        if config.get("n_positions", 0) < PROMPT_TOKENS + 8:
            sys.exit(f"{model}: needs at least {PROMPT_TOKENS + 8} positions for this benchmark")
        tokenizer = load_tokenizer(model)
        first = base_prompt(tokenizer)
        prompts = [first + TYPED[:CHARS_PER_KEYSTROKE * k] for k in range(args.rounds + 1)]
        results = {"date": datetime.date.today().isoformat(),
                   "machine": f"{platform.machine()} {os.cpu_count()} cpus, load average "
                              f"{os.getloadavg()[0]:.1f} at start",
                   "model": f"{model.name}: n_embd {config.get('n_embd')}, n_layer {config.get('n_layer')}, "
                            f"n_positions {config.get('n_positions')}",
                   "prompt_tokens": [len(tokenizer.encode(p)) for p in (prompts[0], prompts[-1])]}
        for label, entries in (("with_reuse", 4), ("without_reuse", 0)):
            times = measure(model, entries, prompts)
            results[label] = {"first_prompt_s": round(times[0], 3),
                              "extending_median_s": round(statistics.median(times[1:]), 3),
                              "extending_s": [round(t, 3) for t in times[1:]]}
    results["speedup"] = round(results["without_reuse"]["extending_median_s"]
                               / results["with_reuse"]["extending_median_s"], 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

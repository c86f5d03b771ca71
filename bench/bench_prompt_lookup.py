"""Prompt-lookup decoding on CPU: its speed-up on code-editing prompts, and what verifying drafts costs.

    .venv/bin/python bench/bench_prompt_lookup.py [--part shipped,verify] [--repeats 5]

shipped: the shipped codegen-stdlib-9M (the Predictor's default load: the fused
CPU path) completes code-editing prompts greedily through the predictor's
Batch, plain and with prompt_lookup_num_tokens K, alternating in the same run.
Each prompt holds the code being rewritten (a function, then the request to
write it again with a rename, or its first lines again; a class, then the request
to write it again with a method renamed). Reported per K:
tokens/s of the whole request (prefill included) and of decoding alone, decode
forward passes, and the drafts' acceptance rate (accepted / proposed). The texts
must be equal, or the run fails.

verify: on the random codegen-350M-mono weights of bench_generation.py (made
in --work if missing), fused int8 and fp32, batch 1 after a 64-token prompt:
the time of one forward pass feeding n tokens (1 = a plain decode step, 9 =
the last token + 8 drafts) with every position's logits, as the decode loop
asks for them, relative to n = 1. The cache is rolled back after each pass, so
every pass sees the same 64 positions. Best of --repeats, passes alternating.

Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FUNCTION = '''def moving_average(values, window):
    """Return the averages of each run of `window` consecutive values."""
    averages = []
    total = sum(values[:window])
    averages.append(total / window)
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages
'''
CLASS = '''class Inventory:
    """Counts of items held in stock."""

    def __init__(self):
        self.counts = {}

    def add(self, item, quantity=1):
        self.counts[item] = self.counts.get(item, 0) + quantity

    def remove(self, item, quantity=1):
        if self.counts.get(item, 0) < quantity:
            raise ValueError(f"not enough {item}")
        self.counts[item] -= quantity

    def total(self):
        return sum(self.counts.values())
'''
FIRST_LINES = "\n".join(FUNCTION.split("\n")[:3]) + "\n"
EDITING_PROMPTS = {
    "rename": FUNCTION + "\n\n# The same function with `values` renamed to `samples`:\n"
                         "def moving_average(samples, window):\n",
    "again": FUNCTION + "\n\n" + FIRST_LINES,
    # a third kind of edit, so the drafting policy is not judged on the two above alone
    "method": CLASS + "\n\n# The same class with `add` renamed to `put`:\nclass Inventory:\n",
}


def shipped(args) -> list[dict]:
    from codegen.generation import Batch, GenerationConfig
    from codegen.predictor import Predictor

    predictor = Predictor()
    results = []
    for name, text in EDITING_PROMPTS.items():
        ids = predictor.tokenizer.encode(text)
        config = GenerationConfig(max_new_tokens=args.new_tokens)
        runs: dict[int, list] = {k: [] for k in args.k}
        for _ in range(args.repeats):
            for k in args.k:
                batch = Batch(predictor.model, predictor.tokenizer)
                start = time.perf_counter()
                (row,) = batch.add(ids, replace(config, prompt_lookup_num_tokens=k))
                batch.step()        # the prompt's prefill and first token (the batch joins it next step)
                first = time.perf_counter()
                while batch:
                    batch.step()
                end = time.perf_counter()
                runs[k].append((end - start, end - first, row.sequence(), batch))
        texts = {k: runs[k][0][2].text for k in args.k}
        if len(set(texts.values())) != 1:
            raise SystemExit(f"{name}: prompt lookup changed the greedy text: {texts}")
        plain_total = min(run[0] for run in runs[0])
        for k in args.k:
            total, decode, sequence, batch = min(runs[k], key=lambda run: run[0])
            tokens = len(sequence.token_ids)
            results.append({
                "part": "shipped", "prompt": name, "prompt_tokens": len(ids), "k": k, "new_tokens": tokens,
                "tokens_per_s": round(tokens / total, 1), "decode_tokens_per_s": round((tokens - 1) / decode, 1),
                "speedup_vs_plain": round(plain_total / total, 2), "decode_steps": batch.decode_steps,
                "drafted": batch.drafted, "accepted": batch.accepted,
                "acceptance": round(batch.accepted / batch.drafted, 3) if batch.drafted else None,
            })
    return results


def verify_cost(args) -> list[dict]:
    import numpy as np
    import paddle

    from codegen.checkpoints import read_config
    from codegen.inference.fast import lm_head_dtype
    from codegen.inference.loader import Plan, load_planned
    from codegen.weight_formats import format_name

    sys.path.insert(0, str(REPO / "bench"))
    from bench_generation import prepare

    weights = args.work / "ours"
    if not (weights / "config.json").exists():
        prepare(args.work)
    paddle.set_device("cpu")
    results = []
    for dtype in args.dtypes:
        fmt = format_name(dtype)
        model = load_planned(weights, read_config(weights), Plan("fused-cpu", "cpu", linears=fmt,
                                                                  head=lm_head_dtype(fmt, None)))
        rng = np.random.default_rng(0)
        prompt = paddle.to_tensor(rng.integers(0, 50000, (1, 64)), dtype="int64")
        times: dict[tuple[int, int], list[float]] = {}
        shapes = [(1, n) for n in args.widths] + [(2, 9)]
        cache = model.new_cache(2, 64 + max(args.widths))
        with paddle.no_grad():
            model(paddle.concat([prompt, prompt]), None, cache, last_only=True)
            for _ in range(args.repeats):
                for rows, n in shapes:
                    view = cache.rows(0, rows)
                    ids = paddle.to_tensor(rng.integers(0, 50000, (rows, n)), dtype="int64")
                    start = time.perf_counter()
                    model(ids, None, view, last_only=False).numpy()
                    times.setdefault((rows, n), []).append(time.perf_counter() - start)
                    cache.truncate(64)      # roll back: a view over every row is the cache itself
        one = min(times[(1, 1)])
        for (rows, n), values in times.items():
            results.append({"part": "verify", "weights": dtype, "rows": rows, "tokens_per_row": n,
                            "ms": round(min(values) * 1000, 2), "vs_one_decode_step": round(min(values) / one, 2)})
        del model
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="shipped,verify")
    parser.add_argument("--k", type=lambda s: [int(k) for k in s.split(",")], default=[0, 4, 8],
                        help="prompt_lookup_num_tokens values; 0 (plain greedy) must come first")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--dtypes", default="int8,fp32", type=lambda s: s.split(","))
    parser.add_argument("--widths", default=[1, 2, 5, 9, 16, 17], type=lambda s: [int(n) for n in s.split(",")])
    parser.add_argument("--work", type=Path, default=Path("/tmp/codegen-bench-generation"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.k[0] != 0:
        parser.error("--k must start with 0: plain greedy is the baseline")
    for part in args.part.split(","):
        for result in {"shipped": shipped, "verify": verify_cost}[part](args):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Prompt-lookup decoding on CPU: its speed-up on code-editing prompts, and what verifying drafts costs.

    .venv/bin/python bench/bench_prompt_lookup.py [--part shipped,verify] [--repeats 5] [--cpu-time]

shipped: the shipped codegen-stdlib-9M (the Predictor's default load: the fused
CPU path) completes code-editing prompts greedily through the predictor's
Batch, plain and with prompt_lookup_num_tokens K, alternating in the same run.
Each prompt holds the code being rewritten (a function, then the request to
write it again with a rename, or its first lines again; a class, then the request
to write it again with a method renamed). Reported per K:
tokens/s of the whole request (prefill included) and of decoding alone, decode
forward passes, and the drafts' acceptance rate (accepted / proposed). The texts
must be equal, or the run fails. Beside them, the bound of copying drafts: the
passes a clairvoyant drafter would need (one that drafts, from whichever earlier
occurrence of the last token in the prompt or the text so far, exactly the
tokens the model goes on to choose), and the speed-up that would give at the
shipped model's measured cost of a pass of n tokens (printed too, as in verify).

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


def clairvoyant(prompt: list[int], tokens: list[int], k: int) -> list[int]:
    """Tokens drafted at each forward pass that decodes `tokens` after `prompt` (the first token comes
    from the prefill) in the fewest passes (then the fewest drafted tokens) when a pass may draft any
    part the model keeps (at most k) of the continuation of any earlier occurrence of the text's last
    token, extended periodically past the text's end as `Lookup` does. No drafter that copies
    earlier text needs fewer passes."""
    def longest(done: int) -> int:
        text, future = prompt + tokens[:done], tokens[done:]
        room = min(k, len(future) - 1)     # the pass's own token comes after the drafts
        best = 0
        for start in range(1, len(text)):
            if text[start - 1] != text[-1]:
                continue
            period = len(text) - start
            kept = 0
            while kept < room and text[start + kept % period] == future[kept]:
                kept += 1
            best = max(best, kept)
        return best

    # from the end back: (passes, drafted tokens, this pass's drafts) once `done` tokens are chosen
    plan = {len(tokens): (0, 0, 0)}
    for done in range(len(tokens) - 1, 0, -1):
        plan[done] = min((1 + plan[done + 1 + d][0], d + plan[done + 1 + d][1], -d) for d in range(longest(done) + 1))
    drafts, done = [], 1
    while done < len(tokens):
        drafts.append(-plan[done][2])
        done += drafts[-1] + 1
    return drafts


def pass_times(model, cache, shapes: list[tuple[int, int]], repeats: int, clock) -> dict[tuple[int, int], float]:
    """Best time (s, by `clock`) of one forward pass feeding rows x n random tokens after what `cache` holds (its
    first rows), with every position's logits, for each (rows, n) in `shapes`, alternating; the cache
    is rolled back after each pass, so every pass sees the same positions."""
    import numpy as np
    import paddle

    rng = np.random.default_rng(0)
    past = cache.length
    times: dict[tuple[int, int], float] = {}
    with paddle.no_grad():
        for _ in range(repeats):
            for rows, n in shapes:
                view = cache.rows(0, rows)
                ids = paddle.to_tensor(rng.integers(0, model.config.vocab_size, (rows, n)), dtype="int64")
                start = clock()
                model(ids, None, view, last_only=False).numpy()
                times[rows, n] = min(times.get((rows, n), float("inf")), clock() - start)
                cache.truncate(past)    # a view over every row is the cache itself
    return times


def shipped(args) -> list[dict]:
    import numpy as np
    import paddle

    from codegen.generation import Batch, GenerationConfig
    from codegen.predictor import Predictor

    predictor = Predictor()
    model = predictor.model
    # what a pass of n tokens costs this model, after a prompt as long as the editing ones
    cache = model.new_cache(1, 256)
    with paddle.no_grad():
        model(paddle.to_tensor(np.arange(150, dtype=np.int64)[None]), None, cache, last_only=True)
    times = pass_times(model, cache, [(1, n) for n in range(1, max(args.k) + 2)], args.repeats * 20, args.clock)
    cost = {n: t for (_, n), t in times.items()}
    results = [{"part": "shipped-verify", "tokens_per_row": n, "ms": round(t * 1000, 3),
                "vs_one_decode_step": round(t / cost[1], 2)} for n, t in cost.items()]
    for name, text in EDITING_PROMPTS.items():
        ids = predictor.tokenizer.encode(text)
        config = GenerationConfig(max_new_tokens=args.new_tokens)
        runs: dict[int, list] = {k: [] for k in args.k}
        for _ in range(args.repeats):
            for k in args.k:
                batch = Batch(predictor.model, predictor.tokenizer)
                start = args.clock()
                (row,) = batch.add(ids, replace(config, prompt_lookup_num_tokens=k))
                batch.step()        # the prompt's prefill and first token (the batch joins it next step)
                first = args.clock()
                while batch:
                    batch.step()
                end = args.clock()
                runs[k].append((end - start, end - first, row.sequence(), batch, row))
        texts = {k: runs[k][0][2].text for k in args.k}
        if len(set(texts.values())) != 1:
            raise SystemExit(f"{name}: prompt lookup changed the greedy text: {texts}")
        plain_total, plain_decode, _, plain_batch, row = min(runs[0], key=lambda run: run[0])
        plain_step = plain_decode / plain_batch.decode_steps
        for k in args.k:
            total, decode, sequence, batch, _ = min(runs[k], key=lambda run: run[0])
            tokens = len(sequence.token_ids)
            result = {
                "part": "shipped", "prompt": name, "prompt_tokens": len(ids), "k": k, "new_tokens": tokens,
                "tokens_per_s": round(tokens / total, 1), "decode_tokens_per_s": round((tokens - 1) / decode, 1),
                "speedup_vs_plain": round(plain_total / total, 2), "decode_steps": batch.decode_steps,
                "drafted": batch.drafted, "accepted": batch.accepted,
                "acceptance": round(batch.accepted / batch.drafted, 3) if batch.drafted else None,
            }
            if k:
                # plain greedy's request with its steps replaced by the clairvoyant passes, each costing a
                # plain step times what its width costs the model against one token
                drafts = clairvoyant(row.prompt, row.tokens, k)
                bound = plain_total - plain_decode + plain_step * sum(cost[1 + d] / cost[1] for d in drafts)
                result.update({"clairvoyant_decode_steps": len(drafts), "clairvoyant_drafted": sum(drafts),
                               "clairvoyant_speedup": round(plain_total / bound, 2)})
            results.append(result)
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
        prompt = paddle.to_tensor(np.random.default_rng(0).integers(0, 50000, (1, 64)), dtype="int64")
        cache = model.new_cache(2, 64 + max(args.widths))
        with paddle.no_grad():
            model(paddle.concat([prompt, prompt]), None, cache, last_only=True)
        times = pass_times(model, cache, [(1, n) for n in args.widths] + [(2, 9)], args.repeats, args.clock)
        for (rows, n), best in times.items():
            results.append({"part": "verify", "weights": dtype, "rows": rows, "tokens_per_row": n,
                            "ms": round(best * 1000, 2), "vs_one_decode_step": round(best / times[1, 1], 2)})
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
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock: steadier on a shared "
                             "machine; run it with OMP_NUM_THREADS=1, or the threads' spinning counts too")
    args = parser.parse_args()
    args.clock = time.process_time if args.cpu_time else time.perf_counter
    if args.k[0] != 0:
        parser.error("--k must start with 0: plain greedy is the baseline")
    for part in args.part.split(","):
        for result in {"shipped": shipped, "verify": verify_cost}[part](args):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Decode speed of CodeGeeX-13B-wide layers on the fused kernels, against the memory-bandwidth roofline.

    .venv/bin/python bench/bench_codegeex_layer.py --layers 4 --dtypes int8,fp16 --rounds 3

CodeGeeX-13B itself does not fit beside other work here, and a decode step is the
same work per layer whatever the number of layers, so this times a few layers of
its exact width (hidden 5,120, 40 heads, MLP 20,480) with random weights, made
straight in the format measured (4 layers: 1.26 GB int8, 2.5 GB fp16), run with
`codegeex_decoder_layer` exactly as `FastCodeGeeXForCausalLM` runs each of its
layers; the embeddings and the output projection are left out. The last layer
runs as the top-query layer (queries from its own input).

The roofline is bench_generation.py's, and measured the same way (its code, not a
copy): bytes read per decoded token (every weight, scale and bias once, plus the
KV cache at the mean context of a 64-token prompt and the new tokens) over the
memory bandwidth, the median of the kernels' read probe over a 256 MB buffer
taken every 16 decode steps, outside the timed steps. Each case runs in its own
process; --rounds alternate the cases and the best round counts (the machine is
shared). Prints one JSON line per round and case, then the best per case.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import REPO, Side, greedy, machine, read_rate, roofline  # noqa: E402

HIDDEN, HEADS, INNER = 5120, 40, 4 * 5120
PROMPT = 64


def random_linear(kernels, fan_in: int, fan_out: int, dtype: str, rng):
    """A WeightOnlyLinear of `dtype` with N(0, 0.02) weights and small biases, packed by the kernels."""
    import paddle
    from codegen.inference.quantize import WeightOnlyLinear
    weight = paddle.to_tensor(rng.standard_normal((fan_in, fan_out), dtype="float32") * 0.02)
    packed, scale = kernels.pack_weight(weight, dtype)
    del weight
    bias = paddle.to_tensor(rng.standard_normal(fan_out, dtype="float32") * 0.02)
    return WeightOnlyLinear(packed, scale if dtype == "int8" else None, bias)


def worker(args) -> dict:
    sys.path.insert(0, str(REPO))
    import codegen  # noqa: F401  before paddle: it sets how OpenMP threads wait
    import numpy as np
    import paddle

    from codegen import kernels as kernel_module
    from codegen.models.cache import KVCache
    from codegen.weight_formats import format_name

    paddle.set_device("cpu")
    kernels = kernel_module.load()
    dtype = format_name(args.dtype)
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(args.layers):
        ln = paddle.nn.LayerNorm(HIDDEN)
        qkv, dense = random_linear(kernels, HIDDEN, 3 * HIDDEN, dtype, rng), random_linear(kernels, HIDDEN, HIDDEN, dtype, rng)
        fc1, fc2 = random_linear(kernels, HIDDEN, INNER, dtype, rng), random_linear(kernels, INNER, HIDDEN, dtype, rng)
        layers.append(kernels.codegeex_layer_weights(ln, qkv, dense, ln, fc1, fc2))
    weight_bytes = sum(t.numel().item() * t.element_size() for weights in layers for t in weights if t is not None)
    top_query = paddle.to_tensor(rng.standard_normal((1, PROMPT + args.new_tokens, HIDDEN), dtype="float32"))

    def run(x, cache):
        past, seq = cache.length, x.shape[1]
        options = dict(past=past, num_heads=HEADS, eps=1e-5)
        for i, weights in enumerate(layers[:-1]):
            x = kernels.codegeex_layer(x, weights, cache.keys[i], cache.values[i], None, **options)
        x = kernels.codegeex_layer(x, layers[-1], cache.keys[-1], cache.values[-1], None,
                                   top_query[:, past:past + seq].contiguous(), **options)
        cache.advance(seq)
        return x

    class Layers(Side):
        def prefill(self, ids, new_tokens):
            cache = KVCache(args.layers, 1, HEADS, PROMPT + new_tokens, HIDDEN // HEADS)
            x = run(paddle.to_tensor(rng.standard_normal((1, PROMPT, HIDDEN), dtype="float32")), cache)
            return np.zeros(1, dtype=np.int64), (x[:, -1:].contiguous(), cache)

        def step(self, tokens, state):
            x, cache = state
            return tokens, (run(x, cache), cache)

    probe_buffer = paddle.ones([64 * 2**20], dtype="float32")  # 256 MB, resident like the weights
    probe = lambda: read_rate(lambda: kernels.read_bandwidth(probe_buffer), probe_buffer.numel().item() * 4)
    runs = [greedy(Layers(), [[0] * PROMPT], args.new_tokens, probe) for _ in range(args.repeats)]
    fastest = min(runs, key=lambda run: run[1])
    result = {"decode_ms_per_token": round(fastest[1] / (args.new_tokens - 1) * 1000, 2),
              "bandwidth": sorted(fastest[3])[len(fastest[3]) // 2]}
    config = {"n_layer": args.layers, "n_embd": HIDDEN}
    result.update(roofline(result, weight_bytes, config, args.new_tokens, kv_itemsize=4))
    return {"dtype": args.dtype, "layers": args.layers, "weight_mb": round(weight_bytes / 1e6), **result,
            "prefill_kernels": kernels.prefill_kernels(), "load_avg": os.getloadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtypes", default="int8,fp16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="decode runs inside a case; the fastest counts")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every case, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(json.dumps({"machine": machine(), "layers": args.layers, "new_tokens": args.new_tokens}), flush=True)
    best: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for dtype in args.dtypes.split(","):
            command = [sys.executable, __file__, "--worker", "--dtype", dtype, "--layers", str(args.layers),
                       "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(f"case {dtype} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({"round": round_index, **result}), flush=True)
            if dtype not in best or result["decode_ms_per_token"] < best[dtype]["decode_ms_per_token"]:
                best[dtype] = result
    for result in best.values():
        print(json.dumps({"best": True, **result}), flush=True)


if __name__ == "__main__":
    main()

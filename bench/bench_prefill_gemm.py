"""The prefill GEMMs alone, each kernel on the same input: CPU time on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_prefill_gemm.py --tokens 1024 --repeats 5

Runs the four Linears of a codegen-350M block (qkv 1,024 -> 3,072, fc_in 1,024 -> 4,096,
out 1,024 -> 1,024, fc_out 4,096 -> 1,024) on a 1,024-token prompt through
`weight_only_linear(..., reduced_precision=True)`, the GEMM the decoder layer's prompt
takes, for every weight format and every kernel this CPU offers it: AMX tiles, the
AVX-512 kernels, fp32. CPU time (time.process_time) rather than wall time, because the
machine is shared; with OMP_NUM_THREADS=1 it is the kernel's own work. The kernels
alternate within each repeat and the best repeat counts. Prints one JSON line per format.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ((1024, 3072), (1024, 4096), (1024, 1024), (4096, 1024))  # (in, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import paddle

    from codegen import kernels
    from codegen.inference.quantize import WeightOnlyLinear

    loaded = kernels.load()
    modes = {"all": lambda: loaded.use_reduced_precision_prefill(True),
             "no-amx": lambda: loaded.use_reduced_precision_prefill(True, amx=False),
             "fp32": lambda: loaded.use_reduced_precision_prefill(False)}
    macs = args.tokens * sum(k * n for k, n in SHAPES)
    for dtype in ("int8", "bf16", "fp16", "fp32"):
        layers = [WeightOnlyLinear.from_linear(paddle.nn.Linear(k, n, bias_attr=False), dtype) for k, n in SHAPES]
        inputs = [paddle.randn([args.tokens, k]) for k, _ in SHAPES]
        best = {}
        for _ in range(args.repeats):
            for switch in modes.values():
                switch()
                kernel = loaded.prefill_kernels()[dtype]
                start = time.process_time()
                for layer, x in zip(layers, inputs):
                    loaded.weight_only_linear(x, layer.weight, layer.weight_scale, None, reduced_precision=True)
                best[kernel] = min(best.get(kernel, float("inf")), time.process_time() - start)
        modes["all"]()
        print(json.dumps({"format": dtype, "tokens": args.tokens, "threads": os.environ.get("OMP_NUM_THREADS"),
                          "load_avg": os.getloadavg(),
                          **{kernel: {"cpu_ms": round(s * 1e3, 1), "gmacs": round(macs / s / 1e9)}
                             for kernel, s in best.items()}}), flush=True)


if __name__ == "__main__":
    main()

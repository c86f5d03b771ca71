"""Full-size proof on CPU: convert, load and generate CodeGen-6B, CodeGen-16B and CodeGeeX-13B in int8.

    .venv/bin/python bench/bench_big_models.py [--models codegen-6b-mono,codegen-16b-mono,codegeex-13b]
                                                [--work /work/bigtmp] [--out results.jsonl]

For each model, one at a time (never two models' files on disk):

1. tools/make_synthetic_checkpoint.py writes a checkpoint with the model's exact shapes and
   random weights, as its authors ship it (CodeGeeX: THUDM's fp16 .pt; CodeGen: Hugging Face's
   fp16 safetensors shards);
2. `codegen convert SRC DST --quantize int8`: its time and peak RSS; the source is then deleted;
3. a fresh process loads `Predictor(DST)` (time, peak RSS so far), then runs greedy decoding with
   a KV cache: a 256-token prompt, then 32 new tokens (the prefill's time, decode ms/token, the
   memory-bandwidth roofline as bench_generation.py measures it, the peak RSS of the process);
4. the converted checkpoint is deleted.

Peak RSS is the kernel's high-water mark of the process (ru_maxrss from wait4): everything it
ever had resident. Before each step the driver waits (up to 15 minutes) for enough available
memory, since the machine is shared, and checks the disk. Prints one JSON line per step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
from bench_generation import PaddleSide, bandwidth_probe, greedy, linear_weight_bytes, machine, prompts, roofline  # noqa: E402,E501

MODELS = ("codegen-6b-mono", "codegen-16b-mono", "codegeex-13b")
GiB = 2**30


def config_of(model: str):
    sys.path.insert(0, str(REPO / "tools"))
    from make_synthetic_checkpoint import MODELS as CONFIGS
    return CONFIGS[model]


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def wait_for_memory(needed: int, poll_s: float = 30, patience_s: float = 900) -> int:
    """Available bytes once `needed` are available, or after `patience_s` (the caller records how many)."""
    deadline = time.monotonic() + patience_s
    while available_bytes() < needed and time.monotonic() < deadline:
        print(json.dumps({"waiting_for_memory_gib": round(needed / GiB, 1),
                          "available_gib": round(available_bytes() / GiB, 1)}), file=sys.stderr, flush=True)
        time.sleep(poll_s)
    return available_bytes()


def check_disk(work: Path, needed: int) -> None:
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(f"{work}: {free / 1e9:.0f} GB free, this model's files need {needed / 1e9:.0f} GB")


def run(command: list, log: Path) -> dict:
    """Run `command` to completion: wall seconds, its peak RSS, its last stdout line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(list(map(str, command)), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - t
    lines = log.read_text().splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n" + "\n".join(lines[-30:]))
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),
            "last_line": lines[-1] if lines else ""}


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_model(model: str, args) -> dict:
    config = config_of(model)
    parameters = config.parameter_count
    min_available = (12 if model == "codegen-6b-mono" else 20) * GiB
    src = args.work / (f"{model}.pt" if model.startswith("codegeex") else model)
    dst = args.work / f"{model}-int8"
    check_disk(args.work, int(parameters * 2 + parameters * 1.1) + (5 << 30))
    result = {"model": model, "parameters": parameters}
    try:
        result["write"] = run([sys.executable, REPO / "tools" / "make_synthetic_checkpoint.py", model, src],
                              args.work / "write.log")
        result["source_gb"] = round(size_bytes(src) / 1e9, 2)
        result["convert_available_gib"] = round(wait_for_memory(min_available) / GiB, 1)
        result["convert"] = run([sys.executable, "-m", "codegen.cli", "convert", src, dst, "--quantize", "int8"],
                                args.work / "convert.log")
        _remove(src)
        result["converted_gb"] = round(size_bytes(dst) / 1e9, 2)
        result["generate_available_gib"] = round(wait_for_memory(min_available) / GiB, 1)
        generated = run([sys.executable, __file__, "--worker", dst, "--prompt-tokens", args.prompt_tokens,
                         "--new-tokens", args.new_tokens], args.work / "generate.log")
        result["generate"] = {**json.loads(generated.pop("last_line")), **generated}
    finally:
        _remove(src)
        _remove(dst)
    return result


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---- the generating process ---------------------------------------------------------------------

def worker(model_dir: Path, prompt_tokens: int, new_tokens: int) -> dict:
    import resource

    from codegen.predictor import Predictor

    t = time.perf_counter()
    predictor = Predictor(model_dir)
    load_s = time.perf_counter() - t
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model, config = predictor.model, predictor.model_config
    codegeex = config.model_type == "codegeex"
    # the probe reads the token embeddings (fp32, resident already: it adds nothing to the peak)
    embeddings = model.word_embeddings.weight if codegeex else model.model.transformer.wte.weight
    prefill_s, decode_s, tokens, bandwidths = greedy(PaddleSide(model), prompts(1, prompt_tokens), new_tokens,
                                                     bandwidth_probe(embeddings))
    decode_ms = decode_s / (new_tokens - 1) * 1000
    # CodeGeeX's LM head is its word embedding, read whole for every token's logits
    weight_bytes = linear_weight_bytes(model) + (embeddings.numel().item() * 4 if codegeex else 0)
    layers = {"n_layer": config.num_layers, "n_embd": config.hidden_size if codegeex else config.n_embd}
    # the higher bandwidth of the probes: the stricter roofline
    measured = {"decode_ms_per_token": round(decode_ms, 1), "bandwidth": max(bandwidths)}
    share = roofline(measured, weight_bytes, layers, new_tokens, kv_itemsize=4, prompt_tokens=prompt_tokens)
    return {"path": type(model).__name__, "load_s": round(load_s, 1), "load_peak_rss_gb": round(load_peak / 1e9, 2),
            f"prefill_{prompt_tokens}_s": round(prefill_s, 1), **measured, **share,
            "generated_tokens": len(tokens[0]),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, run in this order")
    parser.add_argument("--work", type=Path, default=Path("/work/bigtmp"), help="where the checkpoints are written")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.prompt_tokens, args.new_tokens)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}: choose from {', '.join(MODELS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    lines = [{"machine": machine(), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}]
    print(json.dumps(lines[0]), flush=True)
    for model in models:
        lines.append({**bench_model(model, args), "load_avg_end": os.getloadavg()})
        print(json.dumps(lines[-1]), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(lines[-1]) + "\n")


if __name__ == "__main__":
    main()

"""Training throughput: our run_clm (PaddleNLP Trainer + codegen's CodeGen) against Hugging Face's
Trainer with transformers' CodeGenForCausalLM, same config, same initial weights, same token blocks.

    .venv/bin/python bench/bench_training.py [--steps 20] [--warmup 3]

Both sides run single-process fp32 on CPU with the same thread count, batch size,
block size and AdamW settings; tokens/s is measured between the end of the
warm-up steps and the end of the last step (wall time, data loading included).
The sides run alternately `--repeats` times each and the best run of each counts,
which on a shared machine is the one least disturbed by other processes.
The Hugging Face side runs under /tmp/refvenv/bin/python (torch + transformers +
accelerate) in a subprocess; this file's top level imports nothing heavy so
that either interpreter can run it.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF_PYTHON = "/tmp/refvenv/bin/python"
CONFIG = dict(vocab_size=51200, n_positions=512, n_embd=256, n_layer=4, n_head=8, rotary_dim=32)


class StepTimer:
    """Trainer callback (both Trainers call on_step_end with the same arguments)."""

    def __init__(self):
        self.times = []
        self.first_loss = None

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def tokens_per_second(self, warmup: int, tokens_per_step: int) -> float:
        return (len(self.times) - warmup) * tokens_per_step / (self.times[-1] - self.times[warmup - 1])


def _timer_callback(base):
    """A StepTimer that is also an instance of the Trainer's callback base class."""
    return type("Timer", (StepTimer, base), {})()


def common_training(steps: int, batch: int, lr: float) -> dict:
    return dict(max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr, weight_decay=0.0,
                warmup_steps=0, max_grad_norm=1.0, seed=1, logging_steps=steps, report_to=["none"])


# ---- workers ------------------------------------------------------------------------

def ours(work: Path, steps: int, warmup: int, batch: int, block: int) -> dict:
    from paddlenlp.trainer import TrainerCallback

    from codegen.training import trainer as trainer_module
    from codegen.training.run import main

    timer = _timer_callback(TrainerCallback)
    original_init = trainer_module.CausalLMTrainer.__init__

    def init(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), timer]
        original_init(self, *args, **kwargs)

    trainer_module.CausalLMTrainer.__init__ = init
    out = work / "ours"
    argv = ["--model_name_or_path", str(work / "model"), "--train_file", str(REPO / "examples/data/train.json"),
            "--data_cache_dir", str(work / "cache"), "--output_dir", str(out), "--block_size", str(block),
            "--save_strategy", "no", "--device", "cpu"]
    for key, value in common_training(steps, batch, 1e-4).items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    import paddle
    return {"tokens_per_second": timer.tokens_per_second(warmup, batch * block),
            "loss": metrics["train_loss"], "threads": os.environ.get("OMP_NUM_THREADS"),
            "version": f"paddlepaddle {paddle.__version__}"}


def huggingface(work: Path, steps: int, warmup: int, batch: int, block: int) -> dict:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file
    from transformers import CodeGenConfig, CodeGenForCausalLM, Trainer, TrainerCallback, TrainingArguments

    config = CodeGenConfig(**CONFIG, n_ctx=CONFIG["n_positions"], bos_token_id=50256, eos_token_id=50256,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = CodeGenForCausalLM(config)
    ours_state = load_file(str(work / "model" / "model.safetensors"))
    state = {name: torch.from_numpy(array.T.copy() if array.ndim == 2 and not name.endswith("wte.weight")
                                    else array) for name, array in ours_state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("attn.causal_mask" in m or "attn.masked_bias" in m or m.endswith("attn.bias")
                                  for m in missing), (missing, unexpected)
    blocks = np.load(work / "blocks.npy")

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            ids = torch.from_numpy(blocks[i].astype(np.int64))
            return {"input_ids": ids, "labels": ids}

    timer = _timer_callback(TrainerCallback)
    args = TrainingArguments(output_dir=str(work / "hf"), save_strategy="no", use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0, **common_training(steps, batch, 1e-4))
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[timer])
    result = trainer.train()
    return {"tokens_per_second": timer.tokens_per_second(warmup, batch * block), "loss": result.training_loss,
            "threads": torch.get_num_threads(),
            "version": f"torch {torch.__version__}, transformers {transformers.__version__}"}


# ---- driver -------------------------------------------------------------------------

def prepare(work: Path, block: int):
    import numpy as np
    import paddle

    from codegen.checkpoints import save_model
    from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM
    from codegen.tokenizer import codegen_tokenizer
    from codegen.training.data import BlockDataset, find_data_files, tokenize_to_cache

    paddle.seed(0)
    tokenizer = codegen_tokenizer()
    save_model(CodeGenForCausalLM(CodeGenConfig(**CONFIG)), work / "model", tokenizer)
    stream = tokenize_to_cache(find_data_files(REPO / "examples/data/train.json"), tokenizer, text_field="code",
                               cache_root=work / "cache", skip_bad_lines=False)
    dataset = BlockDataset(stream, block, "training")
    np.save(work / "blocks.npy", np.stack([dataset[i]["input_ids"] for i in range(len(dataset))]))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def run_worker(python: str, side: str, work: Path, args) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", side, "--work", str(work),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
               "--block", str(args.block)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(os.cpu_count())}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{side} worker failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternated; the best counts")
    parser.add_argument("--worker", choices=["ours", "huggingface"])
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.worker:
        worker = ours if args.worker == "ours" else huggingface
        print(json.dumps(worker(Path(args.work), args.steps, args.warmup, args.batch, args.block)))
        return
    runs = {"ours": [], "huggingface": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.block)
        # alternated, so a burst of load from other processes hits both sides alike
        for _ in range(args.repeats):
            runs["ours"].append(run_worker(sys.executable, "ours", work, args))
            runs["huggingface"].append(run_worker(REF_PYTHON, "huggingface", work, args))
    results = {side: max(r, key=lambda x: x["tokens_per_second"]) for side, r in runs.items()}
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}; date {time.strftime('%Y-%m-%d')}")
    print(f"config: CodeGen {CONFIG}, batch {args.batch} x block {args.block} tokens, fp32, AdamW, "
          f"{args.steps} steps (first {args.warmup} not timed)")
    print(f"best of {args.repeats} alternated runs per side; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for side, r in results.items():
        every = ", ".join(f"{x['tokens_per_second']:.1f}" for x in runs[side])
        print(f"{side:12s} {r['tokens_per_second']:8.1f} tokens/s (runs: {every})   mean loss {r['loss']:.4f}   "
              f"threads {r['threads']}   {r['version']}")
    ratio = results["ours"]["tokens_per_second"] / results["huggingface"]["tokens_per_second"]
    print(f"ratio ours / huggingface: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""What a run shows and leaves behind: progress lines, metrics.json, loss.png.

All of it comes from the main process only, and the files from the Trainer's
log history, which checkpoints carry, so a resumed run's files cover the whole run.
"""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

from paddlenlp.trainer import TrainerCallback

METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss.png"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class ProgressPrinter(TrainerCallback):
    """One line per logging step: step, loss, learning rate, training tokens/s and ETA.

    Tokens/s counts only the time inside optimizer steps (not evaluation or
    saving); the ETA uses the wall time per step so far, evaluations included.
    """

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.time()
        self.start_step = state.global_step
        self.interval_train_time = 0.0
        self.interval_steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.interval_train_time += time.time() - self.step_start
        self.interval_steps += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            done = state.global_step - self.start_step
            elapsed = time.time() - self.start_time
            eta = elapsed / max(done, 1) * (state.max_steps - state.global_step)
            speed = self.interval_steps * self.tokens_per_step / max(self.interval_train_time, 1e-9)
            self.interval_train_time, self.interval_steps = 0.0, 0
            print(f"step {state.global_step}/{state.max_steps} | epoch {state.epoch:.2f} | loss {logs['loss']:.4f} | "
                  f"lr {logs.get('learning_rate', 0.0):.2e} | {speed:,.0f} tokens/s | "
                  f"elapsed {_duration(elapsed)} | ETA {_duration(eta)}", flush=True)
        elif "eval_loss" in logs:
            print(f"eval at step {state.global_step} | loss {logs['eval_loss']:.4f} | "
                  f"perplexity {logs['eval_perplexity']:.2f}", flush=True)
        elif "train_runtime" in logs:
            # not logs["train_loss"]: after a resume PaddleNLP divides the resumed steps' loss by all steps
            print(f"trained to step {state.global_step} in {_duration(logs['train_runtime'])}", flush=True)


def summarize(log_history: list[dict]) -> dict:
    """metrics.json: the latest training loss and evaluation on top, the curves below."""
    train = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate")}
             for e in log_history if "loss" in e]
    evals = [{"step": e["step"], "loss": e["eval_loss"], "perplexity": e["eval_perplexity"]}
             for e in log_history if "eval_loss" in e]
    summary = {}
    if train:
        summary.update(train_step=train[-1]["step"], train_loss=train[-1]["loss"])
    if evals:
        summary.update(eval_step=evals[-1]["step"], eval_loss=evals[-1]["loss"],
                       eval_perplexity=evals[-1]["perplexity"])
    return {**summary, "train_curve": train, "eval_curve": evals}


def plot_losses(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if metrics["train_curve"]:
        ax.plot([e["step"] for e in metrics["train_curve"]], [e["loss"] for e in metrics["train_curve"]],
                label="training loss")
    if metrics["eval_curve"]:
        ax.plot([e["step"] for e in metrics["eval_curve"]], [e["loss"] for e in metrics["eval_curve"]],
                marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


class MetricsWriter(TrainerCallback):
    """Rewrites output_dir/metrics.json and loss.png after every evaluation and at the end of training."""

    def write(self, args, state):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        metrics = summarize(state.log_history)
        tmp = out / (METRICS_FILE + ".partial")
        tmp.write_text(json.dumps(metrics, indent=1) + "\n")
        os.replace(tmp, out / METRICS_FILE)
        plot_losses(metrics, out / LOSS_PLOT)

    def on_evaluate(self, args, state, control, **kwargs):
        self.write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(args, state)

"""run_clm.py end to end on a tiny model: outputs, checkpoints, kill -9 and resume, LoRA, bad input."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from safetensors.numpy import load_file

EXAMPLES = REPO / "examples" / "data"


def first_lines(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": first_lines(EXAMPLES / "train.json", d / "train.jsonl", 60),
            "valid": first_lines(EXAMPLES / "test.json", d / "valid.jsonl", 6),
            "cache": d / "cache"}


def base_args(model_dir, data, output_dir, max_steps=24):
    return ["--model_name_or_path", str(model_dir), "--train_file", str(data["train"]),
            "--data_cache_dir", str(data["cache"]), "--output_dir", str(output_dir),
            "--block_size", "32", "--per_device_train_batch_size", "2", "--max_steps", str(max_steps),
            "--learning_rate", "5e-3", "--logging_steps", "3", "--save_steps", "6", "--seed", "11"]


def env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_clm(args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "run_clm.py"), *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600, **kwargs)


def weights(directory):
    return load_file(str(Path(directory) / "model.safetensors"))


def assert_same_weights(a, b):
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    args = base_args(tiny_model_dir, data, out) + ["--validation_file", str(data["valid"]), "--eval_steps", "12",
                                                   "--save_total_limit", "2"]
    result = run_clm(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, args, result


def test_output_is_a_loadable_model_with_metrics_and_curve(reference_run, tiny_model_dir):
    from codegen import Taskflow
    from codegen.checkpoints import load_model

    out, _, result = reference_run
    assert "step 24/24" in result.stdout and "tokens/s" in result.stdout and "ETA" in result.stdout
    assert "eval at step 12 | loss" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["eval_curve"]] == [12, 24]
    assert metrics["eval_step"] == 24
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    losses = [e["loss"] for e in metrics["train_curve"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert metrics["eval_curve"][-1]["loss"] < metrics["eval_curve"][0]["loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # save_total_limit 2 keeps the two newest checkpoints; each is a model in our format
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-24"]
    assert_same_weights(weights(out / "checkpoint-24"), weights(out))
    assert not np.array_equal(weights(out)["lm_head.weight"], weights(tiny_model_dir)["lm_head.weight"])
    load_model(out / "checkpoint-18")
    completion = Taskflow("code_generation", model=str(out), max_length=4, decode_strategy="greedy_search")(
        "def add(a, b):")
    assert isinstance(completion, list) and isinstance(completion[0], str)


def test_kill_during_training_then_resume_matches_uninterrupted_run(reference_run, tmp_path):
    reference, args, _ = reference_run
    out = tmp_path / "out"
    args = [a if a != str(reference) else str(out) for a in args]
    process = subprocess.Popen([sys.executable, str(REPO / "run_clm.py"), *args], cwd=REPO, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-6").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and not (out / "model.safetensors").exists()
    for checkpoint in checkpoints:  # whatever the kill interrupted, no checkpoint is half-written
        assert {"model.safetensors", "config.json", "optimizer.pdopt", "trainer_state.json"} <= \
            {p.name for p in checkpoint.iterdir()}
    # what a kill in the middle of a save leaves behind
    (out / ".checkpoint-30.partial").mkdir()
    (out / ".checkpoint-30.partial" / "model.safetensors").write_bytes(b"truncated")

    again = run_clm(args)
    assert again.returncode == 2 and "--resume_from_checkpoint" in again.stderr

    resumed = run_clm(args + ["--resume_from_checkpoint"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved_step = int(checkpoints[-1].name.split("-")[1])
    first_step = int(re.search(r"^step (\d+)/", resumed.stdout, re.MULTILINE).group(1))
    assert saved_step < first_step <= saved_step + 3
    assert not (out / ".checkpoint-30.partial").exists()
    assert_same_weights(weights(out), weights(reference))


def test_lora_trains_adapters_and_merges(tiny_model_dir, data, tmp_path):
    from codegen.checkpoints import load_model
    from codegen.training.model import load_merged

    out = tmp_path / "lora"
    result = run_clm(base_args(tiny_model_dir, data, out, max_steps=6)
                     + ["--lora", "--lora_rank", "4", "--lora_alpha", "8", "--lora_target", "qkv,out,fc",
                        "--learning_rate", "2e-2", "--weight_decay", "0.1", "--merge_lora"])
    assert result.returncode == 0, result.stderr[-3000:]
    # n_embd 32, 2 layers: qkv 32->96, out 32->32, fc_in 32->128, fc_out 128->32, rank 4
    expected = 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert f"trainable parameters: {expected:,} of " in result.stdout

    adapters = load_file(str(out / "adapter_model.safetensors"))
    assert adapters and all(".lora_A" in n or ".lora_B" in n for n in adapters)
    base, merged = weights(tiny_model_dir), weights(out)
    assert set(merged) == set(base)
    for name in base:
        adapted = name.endswith(("qkv_proj.weight", "out_proj.weight", "fc_in.weight", "fc_out.weight"))
        assert np.array_equal(merged[name], base[name]) != adapted, name
    load_model(out)

    # the adapters alone (a run without --merge_lora) give the same model
    adapters_only = tmp_path / "adapters_only"
    shutil.copytree(out / "checkpoint-6", adapters_only)
    model, _ = load_merged(adapters_only)
    for name, tensor in model.state_dict().items():
        np.testing.assert_allclose(tensor.numpy(), merged[name], atol=1e-6)


# ---- errors before any training --------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, message", [
    ("block_size", "--block_size 512 exceeds the context"),
    ("missing_field", "train.jsonl:1: no field 'code'"),
    ("bad_line", "train.jsonl:2: invalid JSON"),
    ("empty", "training data gives no training block"),
    ("fp16", "--fp16/--bf16 need a GPU"),
    ("no_model", "no model"),
    ("bad_resume", "not a checkpoint directory"),
])
def test_bad_input_stops_before_training(tiny_model_dir, tmp_path, capsys, case, message):
    from codegen.training.run import main

    line = '{"code": "def f():\\n    return 1\\n"}\n'
    train = {"missing_field": '{"text": "x = 1"}\n' + line * 40, "bad_line": line + "{oops\n" + line * 40,
             "empty": '{"code": "x = 1"}\n'}.get(case, line * 40)
    args = ["--model_name_or_path", str(tiny_model_dir) if case != "no_model" else str(tmp_path / "nomodel"),
            "--train_file", str(write(tmp_path / "train.jsonl", train)), "--output_dir", str(tmp_path / "out"),
            "--data_cache_dir", str(tmp_path / "cache"), "--block_size", "512" if case == "block_size" else "16"]
    args += {"fp16": ["--fp16"], "bad_resume": ["--resume_from_checkpoint", str(tmp_path / "nope")]}.get(case, [])
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "model.safetensors").exists()

"""Data-parallel and sharded (stage 1) run_clm on CPU: `paddle.distributed.launch --nproc_per_node 2`.

Each worker runs the real run_clm main(); a thin wrapper records the blocks the
rank trained on and its weights after training, for the test to compare.
"""
import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from conftest import REPO, two_rank_launch

WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import paddle
    from codegen.training import trainer
    from codegen.training.run import main

    seen, original_loss, original_train = [], trainer.CausalLMTrainer.compute_loss, trainer.CausalLMTrainer.train

    def compute_loss(self, model, inputs, return_outputs=False):
        if model.training:
            seen.extend(inputs["input_ids"].numpy().tolist())
        return original_loss(self, model, inputs, return_outputs)

    def train(self, *args, **kwargs):
        result = original_train(self, *args, **kwargs)
        rank = paddle.distributed.get_rank()
        out = Path(self.args.output_dir)
        np.savez(out / f"rank{rank}_weights.npz", **{k: v.numpy() for k, v in self.model.state_dict().items()})
        (out / f"rank{rank}_blocks.json").write_text(json.dumps(seen))
        return result

    trainer.CausalLMTrainer.compute_loss = compute_loss
    trainer.CausalLMTrainer.train = train
    sys.exit(main())
""")


def run_two_ranks(model_dir: Path, directory: Path, *flags: str) -> Path:
    """WORKER over 2 CPU ranks with the seed and schedule both tests share; returns its output directory."""
    directory.mkdir(parents=True, exist_ok=True)
    worker = directory / "worker.py"
    worker.write_text(WORKER)
    command = two_rank_launch(worker, model_dir, directory, "--max_steps", "12", "--logging_steps", "3",
                              "--save_steps", "12", "--seed", "3", *flags)
    result = subprocess.run(command, cwd=directory, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in sorted((directory / "logs").glob("workerlog.*")))
    assert result.returncode == 0, (result.stdout + result.stderr + logs)[-4000:]
    return directory / "out"


def test_two_ranks_share_the_data_and_end_with_the_same_weights(tiny_model_dir, tmp_path):
    out = run_two_ranks(tiny_model_dir, tmp_path)

    blocks = [json.loads((out / f"rank{r}_blocks.json").read_text()) for r in (0, 1)]
    assert len(blocks[0]) == len(blocks[1]) == 12 * 2
    assert not {tuple(b) for b in blocks[0]} & {tuple(b) for b in blocks[1]}

    weights = [np.load(out / f"rank{r}_weights.npz") for r in (0, 1)]
    saved = load_file(str(out / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    for name in saved:
        assert np.array_equal(weights[0][name], weights[1][name]), name
        assert np.array_equal(weights[0][name], saved[name]), name
    assert not np.array_equal(saved["lm_head.weight"], initial["lm_head.weight"])

    losses = [e["loss"] for e in json.loads((out / "metrics.json").read_text())["train_curve"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (out / "checkpoint-12" / "rng_state_2.pth").is_file()


def test_sharding_stage1_trains_to_the_data_parallel_weights(tiny_model_dir, tmp_path):
    """Stage 1 splits only the optimizer state across ranks, so it must reach the weights plain
    data parallelism reaches, up to the order of floating-point sums in its gradient reduction."""
    data_parallel = load_file(str(run_two_ranks(tiny_model_dir, tmp_path / "dp") / "model.safetensors"))
    sharded_out = run_two_ranks(tiny_model_dir, tmp_path / "stage1", "--sharding", "stage1")
    sharded = load_file(str(sharded_out / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert sharded.keys() == data_parallel.keys()
    for name in sharded:
        moved = np.abs(data_parallel[name] - initial[name]).max()
        assert np.allclose(sharded[name], data_parallel[name], rtol=0, atol=max(1e-5, 1e-3 * moved)), name
    ranks = [np.load(sharded_out / f"rank{r}_weights.npz") for r in (0, 1)]
    for name in sharded:
        assert np.array_equal(ranks[0][name], ranks[1][name]), name

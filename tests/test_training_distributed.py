"""Data-parallel run_clm on CPU: `python -m paddle.distributed.launch --nproc_per_node 2` (gloo).

Each worker runs the real run_clm main(); a thin wrapper records the blocks the
rank trained on and its weights after training, for the test to compare.
"""
import json
import os
import subprocess
import sys
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


def test_two_ranks_share_the_data_and_end_with_the_same_weights(tiny_model_dir, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "out"
    command = two_rank_launch(worker, tiny_model_dir, tmp_path, "--max_steps", "12", "--logging_steps", "3",
                              "--save_steps", "12", "--seed", "3")
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert result.returncode == 0, (result.stdout + result.stderr + logs)[-4000:]

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

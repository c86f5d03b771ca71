"""PaddleNLP's Trainer, fitted to codegen's models, data and checkpoint format.

The Trainer brings the loop, data parallelism, gradient accumulation, the
AdamW/scheduler setup and evaluation. What changes here:

- the loss: our models return logits, so the next-token loss is computed here;
- the data order: each epoch is a permutation drawn from (seed, epoch) and dealt
  to the ranks in turn, so every rank trains on its own share and a resumed run
  sees exactly the batches the interrupted one would have;
- checkpoints: the model is written in codegen's format (or as LoRA adapters),
  and a checkpoint directory appears under its final name only once complete,
  so a kill during a save leaves the earlier checkpoints as they were;
- evaluation adds perplexity next to the loss.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddlenlp.trainer import Trainer
from paddlenlp.trainer.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from paddlenlp.trainer.trainer_utils import PREFIX_CHECKPOINT_DIR

STAGING_SUFFIX = ".partial"
IGNORE_INDEX = -100


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy of each position's prediction of the next label.

    The labels are shifted rather than the logits sliced: a slice would copy the
    [batch, seq, vocab] logits and their gradient, the largest tensors of a step
    (a third of the step time on CPU). The last position has no next label.
    """
    batch, seq, vocab = logits.shape
    padding = paddle.full([batch, 1], IGNORE_INDEX, dtype=labels.dtype)
    next_labels = paddle.concat([labels[:, 1:], padding], axis=1)
    # summed, then divided: Paddle's "mean" would count the ignored positions too
    total = F.cross_entropy(logits.reshape([-1, vocab]), next_labels.reshape([-1]), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (batch * (seq - 1))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


class ShuffledBlockSampler(paddle.io.DistributedBatchSampler):
    """Batches of block indices: a fresh permutation per epoch from (seed, epoch), rank r taking
    every n-th index from r. The permutation is repeated cyclically so all ranks get equally many.

    A subclass of Paddle's distributed sampler so the Trainer calls `set_epoch` each epoch.
    """

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int, drop_last: bool):
        super().__init__(dataset, batch_size, num_replicas=num_replicas, rank=rank, shuffle=True,
                         drop_last=drop_last)
        self.seed = seed

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        mine = np.resize(order, self.total_size)[self.local_rank::self.nranks]
        for start in range(0, len(mine), self.batch_size):
            batch = mine[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch.tolist()


def checkpoint_dirs(output_dir) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest step first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


class CausalLMTrainer(Trainer):
    """`save_weights(dir)` / `load_weights(dir)` write and read the model's part of a checkpoint."""

    def __init__(self, *args, save_weights: Callable[[Path], None], load_weights: Callable[[Path], None],
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.save_weights = save_weights
        self.load_weights = load_weights
        if self.args.should_save:
            # staging or retired directories left by a run killed while saving
            for stale in Path(self.args.output_dir).glob(f".{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def compute_loss(self, model, inputs, return_outputs=False):
        loss = causal_lm_loss(model(inputs["input_ids"]), inputs["labels"])
        return (loss, {"loss": loss}) if return_outputs else loss

    def _get_train_sampler(self):
        args = self.args
        return ShuffledBlockSampler(self.train_dataset, args.per_device_train_batch_size,
                                    num_replicas=max(args.dataset_world_size, 1), rank=max(args.dataset_rank, 0),
                                    seed=args.seed, drop_last=args.dataloader_drop_last)

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if f"{prefix}_loss" in output.metrics:
            output.metrics[f"{prefix}_perplexity"] = perplexity(output.metrics[f"{prefix}_loss"])
        return output

    # -- checkpoints ---------------------------------------------------------------

    def _save(self, output_dir=None, state_dict=None, merge_tensor_parallel=False):
        if self.args.should_save:
            self.save_weights(Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        if resume_from_checkpoint:
            self.load_weights(Path(resume_from_checkpoint))

    def _save_checkpoint(self, model, metrics=None):
        args = self.args
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = Path(args.output_dir) / name
        staging = final.with_name(f".{name}{STAGING_SUFFIX}")
        rng_state = {"python": random.getstate(), "numpy": np.random.get_state(),
                     "cuda": paddle.get_rng_state(), "cpu": paddle.framework.core.default_cpu_generator().get_state()}
        if args.world_size > 1:
            rng_states = []
            paddle.distributed.all_gather_object(rng_states, rng_state)
        if args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            self._save(staging)
            paddle.save(self.optimizer.state_dict(), str(staging / OPTIMIZER_NAME))
            paddle.save(self.lr_scheduler.state_dict(), str(staging / SCHEDULER_NAME))
            if self.do_grad_scaling:
                paddle.save(self.scaler.state_dict(), str(staging / SCALER_NAME))
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
            if args.world_size > 1:
                paddle.save(rng_states, str(staging / f"rng_state_{args.world_size}.pth"))
            else:
                paddle.save(rng_state, str(staging / "rng_state.pth"))
            _publish(staging, final)
            self._rotate_checkpoints(use_mtime=False, output_dir=args.output_dir)
        if args.world_size > 1:
            paddle.distributed.barrier()


def _publish(staging: Path, final: Path) -> None:
    """Give a complete checkpoint its final name (replacing one of the same step, e.g. after resuming earlier)."""
    if final.exists():
        retired = final.with_name(f".{final.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)

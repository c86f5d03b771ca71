"""Tensor parallelism: a model's blocks split over the ranks of a `paddle.distributed` launch.

Megatron's split: in each attention and MLP, the first Linears are column-parallel
(each rank holds a contiguous share of their outputs: whole heads, a share of the MLP's
inner width) and the last one is row-parallel (the matching share of its inputs). Each
rank then computes a partial sum of the block's output, and one all-reduce adds them.
A row-parallel Linear's bias must be added once: rank 0 holds it, the others zeros.
Embeddings, LayerNorms and the LM head are replicated on every rank.

Paddle's own `meta_parallel` layers need `c_identity`, which has no CPU kernel in
Paddle 3.3.1; plain `paddle.distributed.all_reduce` runs over gloo on CPU and NCCL on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import paddle.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the split: rank `rank` of `world` (the launch's default group)."""
    rank: int
    world: int

    def part(self, size: int, what: str) -> int:
        """This rank's share of `size` (a ValueError naming `what` if it does not divide)."""
        if size % self.world:
            raise ValueError(f"{what} ({size}) cannot be split {self.world} ways for tensor parallelism")
        return size // self.world

    def all_reduce(self, partial):
        """The sum over ranks of each rank's `partial`, in place (identical on every rank)."""
        if self.world > 1:
            dist.all_reduce(partial)
        return partial


UNSPLIT = TensorParallel(rank=0, world=1)

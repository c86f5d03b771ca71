"""Joining a `paddle.distributed.launch`: how many ways this process's model is split.

Under `python -m paddle.distributed.launch --nproc_per_node N` every process runs the
same program on the same inputs and holds 1/N of each split matrix (models/parallel.py);
the forward passes meet in all-reduces. Outside a launch nothing is split.
"""
from __future__ import annotations

import os

from ..models.parallel import UNSPLIT, TensorParallel


def launch_world() -> int:
    """The launch's number of processes (1 outside a launch)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def launch_rank() -> int:
    """This process's rank in the launch (0 outside a launch)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def join_launch(tensor_parallel: int | None = None) -> TensorParallel:
    """This process's share of the split: `tensor_parallel` ways, by default the launch's size; 1 turns it off
    (every process then holds the whole model). Joins the launch's collectives (gloo on CPU, NCCL on GPU)."""
    world = launch_world()
    ways = world if tensor_parallel is None else tensor_parallel
    if ways < 1:
        raise ValueError(f"tensor_parallel must be at least 1 (1: no split), got {ways}")
    if ways == 1:
        return UNSPLIT
    if ways != world:
        raise ValueError(f"tensor_parallel={ways} splits the model over {ways} processes: start them with "
                         f"python -m paddle.distributed.launch --nproc_per_node {ways} (this launch has {world}), "
                         f"or give 1 to turn the split off")
    import paddle.distributed as dist
    if not dist.is_initialized():
        dist.init_parallel_env()
    return TensorParallel(rank=dist.get_rank(), world=world)


def from_rank_zero(value):
    """Rank 0's `value`, on every rank (each rank calls this at the same point of the same program)."""
    import paddle.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_reach(point: str, parallel: TensorParallel) -> None:
    """Wait until every rank has reached `point` (e.g. loaded its share), however long that takes: through
    the launch's TCP store, since gloo gives up on a collective that waits more than 30 s."""
    from paddle.base import core
    store = core.create_or_get_global_tcp_store()
    store.set(f"codegen/{point}/{parallel.rank}", b"1")
    for rank in range(parallel.world):
        store.wait(f"codegen/{point}/{rank}")

"""Serving a model split over the processes of a `paddle.distributed.launch`.

Every forward pass of a split model is collective: all ranks must run the same passes
on the same inputs. Rank 0 serves HTTP; its engine works on a `LeadingPredictor`, which
broadcasts, before anything that runs the model, what it is about to do: start a
batch, score a prompt, or step the batch with the prompts added and the rows
cancelled or ended since the last step. The other ranks `follow`: they do the same on
their own predictor, so their batches and prompt caches stay identical, row for row.
Sampling without a seed gets one from rank 0 (each rank would draw other tokens).

Gloo abandons a collective that waits more than 30 s, and an idle follower waits for
its next command: rank 0 sends an empty one every KEEPALIVE seconds. One lock makes each
announcement and the work it announces one unit, whichever thread sends it.
"""
from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import replace

from ..inference.parallel import all_ranks_reach, from_rank_zero

logger = logging.getLogger(__name__)

KEEPALIVE = 5.0     # seconds between rank 0's empty commands


class LeadingPredictor:
    """Rank 0's predictor: the engine's calls that run the model are announced to the followers first.
    Created once every rank has loaded its share."""

    def __init__(self, predictor):
        self._predictor = predictor
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        all_ranks_reach("loaded", predictor.parallel)
        threading.Thread(target=self._keep_alive, name="codegen-keepalive", daemon=True).start()

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def batch(self, prefill_chunk: int | None = None) -> "LeadingBatch":
        with self._lock:
            from_rank_zero(("batch", prefill_chunk))
            return LeadingBatch(self._predictor.batch(prefill_chunk), self._lock)

    def score(self, prompt_ids: list[int], top: int):
        with self._lock:
            from_rank_zero(("score", prompt_ids, top))
            return self._predictor.score(prompt_ids, top)

    def stop_followers(self) -> None:
        with self._lock:
            self._stopped.set()
            from_rank_zero(("stop",))

    def _keep_alive(self) -> None:
        while not self._stopped.wait(KEEPALIVE):
            with self._lock:
                if not self._stopped.is_set():
                    from_rank_zero(("idle",))


class LeadingBatch:
    """A `Batch` whose changes reach the followers' batches with each step.

    Cancels and ends (from any thread) are kept here until the step, so the step that
    applies them is the one they are announced with.
    """

    def __init__(self, batch, announcing: threading.Lock):
        self._batch = batch
        self._announcing = announcing
        self._added: list[tuple] = []
        self._lock = threading.Lock()
        self._cancelled: list[int] = []
        self._ended: list[int] = []

    def __getattr__(self, name):
        return getattr(self._batch, name)

    def __bool__(self) -> bool:
        return bool(self._batch)

    def add(self, prompt_ids: list[int], config, where: str = "request"):
        if config.decode_strategy == "sampling" and config.seed is None:
            config = replace(config, seed=secrets.randbits(63))
        rows = self._batch.add(prompt_ids, config, where)
        self._added.append((prompt_ids, config))
        return rows

    def cancel(self, index: int) -> None:
        with self._lock:
            self._cancelled.append(index)

    def end(self, index: int) -> None:
        with self._lock:
            self._ended.append(index)

    def step(self):
        with self._lock:
            cancelled, self._cancelled = self._cancelled, []
            ended, self._ended = self._ended, []
        added, self._added = self._added, []
        with self._announcing:
            from_rank_zero(("step", added, cancelled, ended))
            return _step(self._batch, cancelled, ended)


def _step(batch, cancelled, ended):
    for index in cancelled:
        batch.cancel(index)
    for index in ended:
        batch.end(index)
    return batch.step()


def follow(predictor) -> int:
    """A follower's loop: do what rank 0 announces until it stops; the exit status."""
    all_ranks_reach("loaded", predictor.parallel)
    batch = None
    while True:
        command = from_rank_zero(None)
        kind = command[0]
        if kind == "stop":
            return 0
        try:
            if kind == "idle":
                continue
            if kind == "batch":
                batch = predictor.batch(command[1])
            elif kind == "score":
                predictor.score(*command[1:])
            else:
                _, added, cancelled, ended = command
                for prompt_ids, config in added:
                    batch.add(prompt_ids, config)
                _step(batch, cancelled, ended)
        except Exception:
            # rank 0 ran the same and met the same error: it answers the request, both go on
            logger.exception("rank %d: %s failed", predictor.parallel.rank, kind)

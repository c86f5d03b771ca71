"""The model's worker thread and the jobs it decodes.

One thread loads the model and is the only one to touch it, so the event loop
never blocks on Paddle. Jobs wait in a bounded queue; each time the worker is
free it takes every waiting job up to `max_batch_size` sequences and decodes
them as one batch, so requests that arrive together share forward passes.
Results travel back to each request's event loop as they are produced, and a
cancelled job's rows leave the batch before the next decode step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class NotReady(Exception):
    pass


@dataclass
class PromptScores:
    """Log-probabilities of a prompt's own tokens (for `echo` with `logprobs`)."""
    prompt_index: int
    token_ids: list[int]
    logprobs: list            # None for the first token, which nothing predicts
    top_logprobs: list        # per token {text: logprob}, None for the first


class Finished:
    """The last item of every job: generation ended, normally or cancelled."""


@dataclass(eq=False)
class Job:
    """One request: its prompts (each decoded `n` times) and where its results go.

    `configs[p]` is None for a prompt with nothing to generate (max_tokens 0).
    """
    prompt_ids: list[list[int]]
    configs: list
    n: int
    score_prompts: int | None       # alternatives per prompt token to report, or None for no scoring
    loop: asyncio.AbstractEventLoop
    results: asyncio.Queue = field(default_factory=asyncio.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cancelled: bool = False
    _on_cancel: Callable[[], None] | None = None

    @property
    def rows(self) -> int:
        return len(self.prompt_ids) * self.n

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop generating for this job (any thread; a no-op once it has ended)."""
        with self._lock:
            self._cancelled, callback = True, self._on_cancel
        if callback is not None:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the job is cancelled, or now if it already is."""
        with self._lock:
            self._on_cancel, cancelled = callback, self._cancelled
        if cancelled:
            callback()

    def deliver(self, item) -> None:
        """Hand a result to the request's event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.results.put_nowait, item)
        except RuntimeError:
            # the request's event loop is closed (server shutting down): nobody is listening
            self.cancel()

    async def items(self) -> AsyncIterator:
        """StreamEvents (index counted within this job) and PromptScores until the job ends.

        Re-raises an error the worker hit while running this job.
        """
        while True:
            item = await self.results.get()
            if isinstance(item, Finished):
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class Engine:
    """Loads a Predictor with `load()` in its worker thread, then decodes submitted jobs."""

    def __init__(self, load: Callable[[], object], max_batch_size: int, max_queue: int):
        self._load = load
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.predictor = None
        self.loaded_at: float | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()      # set when loading ended, well or not
        self._waiting: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._run, name="codegen-model", daemon=True)

    # -- event-loop side --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    @property
    def running(self) -> list[Job]:
        """The jobs being decoded now."""
        return list(self._running)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._wakeup:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._wakeup.notify_all()
        for job in self._running:
            job.cancel()
        for job in waiting:
            job.cancel()
            job.deliver(Finished())
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if not self.ready:
            raise NotReady()
        with self._wakeup:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job)
            self._wakeup.notify()

    # -- worker side ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            predictor = self._load()
            self.loaded_at = time.time()
            self.predictor = predictor
        except (ValueError, FileNotFoundError) as e:   # a bad checkpoint: the message says it all
            logger.error("loading the model failed: %s", e)
            self.load_error = e
            return
        except BaseException as e:  # reported by /health and the server's exit status
            logger.exception("loading the model failed")
            self.load_error = e
            return
        finally:
            self.loaded.set()
        while (batch := self._next_batch()) is not None:
            self._running = batch
            try:
                self._decode(batch)
            finally:
                self._running = []
                for job in batch:
                    job.deliver(Finished())

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job and those after it that fit in one batch with it; None when stopping."""
        with self._wakeup:
            while not self._waiting and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return None
            batch, rows = [], 0
            while self._waiting and (not batch or rows + self._waiting[0].rows <= self.max_batch_size):
                job = self._waiting.popleft()
                if job.cancelled:
                    job.deliver(Finished())
                    continue
                batch.append(job)
                rows += job.rows
            return batch

    def _decode(self, batch: list[Job]) -> None:
        from ..generation import Request, stream

        predictor = self.predictor
        requests, owners = [], []     # owners[stream row] = (job, choice index within the job)
        for job in batch:
            if job.score_prompts is not None:
                self._score(job)
            for p, (ids, config) in enumerate(zip(job.prompt_ids, job.configs)):
                if config is not None and not job.cancelled:
                    requests.append(Request(ids, config))
                    owners.extend((job, p * job.n + j) for j in range(job.n))
        if not requests:
            return
        try:
            events = stream(predictor.model, predictor.tokenizer, requests, prompt_cache=predictor.prompt_cache)
            for job in {job: None for job, _ in owners}:
                rows = [row for row, (owner, _) in enumerate(owners) if owner is job]
                job.on_cancel(lambda rows=rows: [events.cancel(row) for row in rows])
            for event in events:
                job, index = owners[event.index]
                if not job.cancelled:
                    job.deliver(replace(event, index=index))
        except Exception as e:
            logger.exception("generation failed")
            for job in batch:
                job.deliver(e)

    def _score(self, job: Job) -> None:
        from .logprobs import score_prompt
        try:
            for p, ids in enumerate(job.prompt_ids):
                logprobs, top = score_prompt(self.predictor.model, self.predictor.tokenizer, ids, job.score_prompts)
                job.deliver(PromptScores(p, ids, logprobs, top))
        except Exception as e:
            logger.exception("scoring a prompt failed")
            job.deliver(e)
            job.cancel()

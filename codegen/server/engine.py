"""The model's worker thread and the jobs it decodes.

One thread loads the model and is the only one to touch it, so the event loop
never blocks on Paddle. Jobs wait in a bounded queue. The worker keeps one
continuous batch (the predictor's `batch()`): before each decode step it
admits waiting jobs while their rows fit in `max_batch_size`, so a request
joins at the next step instead of waiting for the batch in progress to end;
its prompt is prefilled a chunk per step beside the other rows' decoding.
Results travel back to each request's event loop as they are produced. A
cancelled job's rows leave the batch at the next step; a job past its
deadline ends there with what it has.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

from .metrics import Metrics

logger = logging.getLogger(__name__)

PREFILL_CHUNK = 256     # prompt positions prefilled per decode step
# Finished jobs between two hand-backs of freed heap memory to the OS. Every request replaces
# its editor's prompt-cache entry and every step allocates logits; glibc keeps the freed pages,
# so without hand-backs the server grew 6.5% over 2,000 requests after its prompt cache was
# full, holding nothing more. What is freed between two hand-backs stays resident: with one
# every 64 jobs it still grew 8%, with one every 8 about 3%. A hand-back takes about 2 ms.
RELEASE_MEMORY_EVERY = 8


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
    `timeout` (seconds from submission) ends the job's rows with what they have.
    """
    prompt_ids: list[list[int]]
    configs: list
    n: int
    score_prompts: int | None       # alternatives per prompt token to report, or None for no scoring
    loop: asyncio.AbstractEventLoop
    timeout: float | None = None
    results: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = 0.0
    first_token_at: float | None = None
    generated: int = 0
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


@dataclass(eq=False)
class _Running:
    """A job in the batch: which batch rows are its choices, and which are still open."""
    job: Job
    choices: dict[int, int]     # batch row index -> choice index within the job
    ended: bool = False         # its deadline passed and its rows were told to end


class Engine:
    """Loads a Predictor with `load()` in its worker thread, then decodes submitted jobs."""

    def __init__(self, load: Callable[[], object], max_batch_size: int, max_queue: int,
                 metrics: Metrics | None = None, prefill_chunk: int = PREFILL_CHUNK):
        self._load = load
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.prefill_chunk = prefill_chunk
        self.predictor = None
        self.loaded_at: float | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()      # set when loading ended, well or not
        self.decode_steps = 0                # forward passes over the decoding rows so far
        self._finished_since_release = 0
        self._waiting: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._running: list[_Running] = []
        self._batch = None
        self._thread = threading.Thread(target=self._run, name="codegen-model", daemon=True)
        self.metrics.queued_requests.set_function(lambda: len(self._waiting))

    # -- event-loop side --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    @property
    def running(self) -> list[Job]:
        """The jobs in the batch now."""
        return [r.job for r in list(self._running)]

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._wakeup:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._wakeup.notify_all()
        for job in self.running:
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
            job.submitted = time.monotonic()
            self._waiting.append(job)
            self._wakeup.notify()

    # -- worker side ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            predictor = self._load()
            self.loaded_at = time.time()
            self._batch = predictor.batch(self.prefill_chunk)
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
        while (admitted := self._next_jobs()) is not None:
            for job in admitted:
                self._start(job)
            self._drop_cancelled_and_late()
            if not self._batch:
                continue
            batch = self._batch
            decoded, drafted, accepted = batch.decode_steps, batch.drafted, batch.accepted
            try:
                events = batch.step()
                self.decode_steps += batch.decode_steps - decoded
                self.metrics.draft_tokens.inc(batch.drafted - drafted)
                self.metrics.accepted_tokens.inc(batch.accepted - accepted)
            except Exception as e:
                logger.exception("generation failed")
                for running in self._running:
                    running.job.deliver(e)
                    running.job.deliver(Finished())
                self._running = []
                self._batch = self.predictor.batch(self.prefill_chunk)
                continue
            finally:
                self.metrics.active_rows.set(self._batch.rows)
                self.metrics.batch_size.set(self._batch.decoding)
            self._deliver(events)
            if self._finished_since_release >= RELEASE_MEMORY_EVERY:
                self._finished_since_release = 0
                self.predictor.release_freed_memory()
        for running in self._running:
            running.job.deliver(Finished())
        self._running = []

    def _next_jobs(self) -> list[Job] | None:
        """Waiting jobs whose rows fit beside the batch's (oldest first); None when stopping.

        Blocks while there is nothing to do.
        """
        with self._wakeup:
            while not self._waiting and not self._batch and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return None
            jobs, rows = [], self._batch.rows
            while self._waiting and rows + self._waiting[0].rows <= self.max_batch_size:
                job = self._waiting.popleft()
                if job.cancelled:
                    job.deliver(Finished())
                    continue
                jobs.append(job)
                rows += job.rows
            return jobs

    def _start(self, job: Job) -> None:
        """Score the job's prompts if asked, then add its prompts to the batch."""
        self.metrics.queue_wait.observe(time.monotonic() - job.submitted)
        self.metrics.prompt_tokens.inc(sum(len(ids) for ids in job.prompt_ids))
        try:
            if job.score_prompts is not None:
                for p, ids in enumerate(job.prompt_ids):
                    logprobs, top = self.predictor.score(ids, job.score_prompts)
                    job.deliver(PromptScores(p, ids, logprobs, top))
            choices = {}
            for p, (ids, config) in enumerate(zip(job.prompt_ids, job.configs)):
                if config is not None:
                    rows = self._batch.add(ids, config)
                    choices.update((row.index, p * job.n + j) for j, row in enumerate(rows))
        except Exception as e:
            logger.exception("starting a request failed")
            job.deliver(e)
            choices = {}
        if not choices:
            job.deliver(Finished())
            return
        self._running.append(_Running(job, choices))
        batch = self._batch
        job.on_cancel(lambda: [batch.cancel(row) for row in choices])

    def _drop_cancelled_and_late(self) -> None:
        """Forget cancelled jobs (the batch drops their rows at its next step); end jobs past their deadline."""
        now = time.monotonic()
        for running in list(self._running):
            job = running.job
            if job.cancelled:
                self._running.remove(running)
                job.deliver(Finished())
            elif job.timeout is not None and not running.ended and now - job.submitted >= job.timeout:
                running.ended = True
                for row in running.choices:
                    self._batch.end(row)

    def _deliver(self, events) -> None:
        owners = {row: running for running in self._running for row in running.choices}
        now = time.monotonic()
        for event in events:
            running = owners.get(event.index)
            if running is None or running.job.cancelled:   # forgotten between its cancel and the step
                continue
            job = running.job
            if job.first_token_at is None and event.token_ids:
                job.first_token_at = now
                self.metrics.time_to_first_token.observe(now - job.submitted)
            job.generated += len(event.token_ids)
            self.metrics.completion_tokens.inc(len(event.token_ids))
            job.deliver(replace(event, index=running.choices[event.index]))
            if event.finish_reason is not None:
                del running.choices[event.index]
                if not running.choices:
                    self._finish(running, now)

    def _finish(self, running: _Running, now: float) -> None:
        job = running.job
        self._running.remove(running)
        self._finished_since_release += 1
        if job.generated > 1:
            self.metrics.time_per_output_token.observe((now - job.first_token_at) / (job.generated - 1))
        job.deliver(Finished())

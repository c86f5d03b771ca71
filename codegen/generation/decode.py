"""The decode loop for greedy search and sampling, streamed or not.

One left-padded prefill, then one token per row per step into a KV cache
allocated once. Rows that finish or are cancelled leave the batch at once (the
cache is reordered onto the survivors), so they cost nothing further.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .batching import (check_prompt, copy_positions, heal_prompt, left_pad, only_choices, PAD_ID, prefill,
                       select_rows, step, usable_vocab)
from .beam import beam_search
from .config import GenerationConfig
from .detokenize import IncrementalText
from .outputs import Sequence, StreamEvent
from .processors import apply_repetition_penalty, log_softmax, sample_token, top_alternatives
from .prompt_cache import PromptCache


@dataclass
class Request:
    """One prompt with its own options; it becomes `config.num_return_sequences` rows."""
    prompt_ids: list[int]
    config: GenerationConfig


class _Row:
    """One sequence being generated."""

    def __init__(self, index: int, prompt: list[int], config: GenerationConfig, rng, tokenizer,
                 first_choices: list[int] | None = None, healed: str = ""):
        self.index = index
        self.prompt = prompt
        self.config = config
        self.rng = rng
        # a healed prompt's next token must start with the text taken off the prompt
        self.first_choices = first_choices
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[dict[str, float]] | None = [] if config.logprobs is not None else None
        self.text = IncrementalText(tokenizer, config.stop, hidden=healed)
        self.eos_logprob = 0.0
        self.finish_reason: str | None = None
        self._finish_reported = False

    def accept(self, token: int, logprobs: np.ndarray, eos: int | None, token_text) -> None:
        """Record the chosen token; `logprobs` is the row's raw log-softmax."""
        if token == eos:
            self.eos_logprob = float(logprobs[token])
            self._finish("stop")
            return
        self.tokens.append(token)
        self.logprobs.append(float(logprobs[token]))
        if self.top is not None:
            self.top.append(top_alternatives(logprobs, self.config.logprobs, token_text))
        if self.text.add(token):
            self._finish("stop")
        elif len(self.tokens) == self.config.max_new_tokens:
            self._finish("length")

    def _finish(self, reason: str) -> None:
        self.text.finish()
        self.finish_reason = reason

    def event(self) -> StreamEvent | None:
        text, start, end = self.text.take()
        report_finish = self.finish_reason is not None and not self._finish_reported
        if not (text or end > start or report_finish):
            return None
        self._finish_reported = self.finish_reason is not None
        return StreamEvent(self.index, text, self.tokens[start:end], self.logprobs[start:end],
                           self.top[start:end] if self.top is not None else None,
                           self.finish_reason if report_finish else None)

    def sequence(self) -> Sequence:
        kept = self.text.released_tokens
        return Sequence(self.tokens[:kept], self.text.text, self.finish_reason,
                        float(sum(self.logprobs[:kept]) + self.eos_logprob), self.logprobs[:kept],
                        self.top[:kept] if self.top is not None else None)


class Stream:
    """Iterator of `StreamEvent`s for a batch of requests, returned by `stream`.

    `cancel(index)` (safe from another thread) drops that row before the next
    decode step and it reports nothing more; `close()` ends everything. All input
    checks happen when the stream is created, before the first event.
    """

    def __init__(self, model, tokenizer, requests: list[Request], prompt_cache: PromptCache | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.rows: list[_Row] = []
        for i, request in enumerate(requests):
            if not isinstance(request, Request):
                raise ValueError(f"requests[{i}] must be a Request, got {type(request).__name__}")
            config = request.config.validate()
            if config.decode_strategy == "beam_search":
                raise ValueError(f"requests[{i}]: beam search cannot be streamed; use generate()")
            prompt = check_prompt(model, request.prompt_ids, config.max_new_tokens, f"requests[{i}]")
            prompt, healed, first_choices = heal_prompt(tokenizer, prompt, usable_vocab(model, tokenizer))
            for j in range(config.num_return_sequences):
                # a seed gives each sequence its own stream, whatever else is in the batch
                rng = np.random.default_rng(None if config.seed is None else [config.seed, j])
                self.rows.append(_Row(len(self.rows), prompt, config, rng, tokenizer, first_choices, healed))
        self.prompt_cache = prompt_cache if len(self.rows) == 1 else None
        self._cancelled: set[int] = set()
        self._events = self._run() if self.rows else iter(())

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def cancel(self, index: int) -> None:
        if not 0 <= index < len(self.rows):
            raise ValueError(f"no row {index} in a stream of {len(self.rows)} rows")
        self._cancelled.add(index)

    def close(self) -> None:
        if hasattr(self._events, "close"):
            self._events.close()

    # -- the loop -----------------------------------------------------------------

    def _run(self) -> Iterator[StreamEvent]:
        active = list(self.rows)
        cache, mask, logits = self._prefill(active)
        penalized = any(row.config.repetition_penalty != 1.0 for row in active)
        seen = self._seen_tokens(active, logits.shape[1]) if penalized else None
        try:
            while True:
                self._choose(active, logits, seen)
                for row in active:
                    event = row.event()
                    if event is not None:
                        yield event
                keep = [i for i, row in enumerate(active)
                        if row.finish_reason is None and row.index not in self._cancelled]
                if not keep:
                    return
                if len(keep) < len(active):
                    select_rows(cache, keep)
                    active, mask = [active[i] for i in keep], mask[keep]
                    seen = seen[keep] if seen is not None else None
                cache, mask = self._make_room(cache, mask)
                mask = np.concatenate([mask, np.ones((len(active), 1), dtype=np.int64)], axis=1)
                logits = step(self.model, cache, [row.tokens[-1] for row in active], mask)
        finally:
            if self.prompt_cache is not None:
                row = self.rows[0]
                fed = (row.prompt + row.tokens)[:cache.length]
                self.prompt_cache.put(fed, cache)

    def _prefill(self, active: list[_Row]):
        prompts = [row.prompt for row in active]
        room = max(len(p) for p in prompts) + max(row.config.max_new_tokens for row in active)
        # a batch mixing a long prompt with a long generation can need more than the
        # context; each row fits, so `_make_room` can always drop shared padding
        room = min(room, self.model.config.max_position_embeddings)
        if self.prompt_cache is not None:
            cache, reused = self.prompt_cache.start(self.model, prompts[0], room)
            mask = np.ones((1, len(prompts[0])), dtype=np.int64)
            ids = np.asarray(prompts[0][reused:], dtype=np.int64)[None]
            return cache, mask, prefill(self.model, cache, ids, mask)
        ids, mask = left_pad(prompts, PAD_ID)
        cache = self.model.new_cache(len(active), max_length=room)
        return cache, mask, prefill(self.model, cache, ids, mask)

    def _make_room(self, cache, mask: np.ndarray):
        """Drop the leading positions that are padding in every row when the cache is full."""
        if cache.length < cache.max_length:
            return cache, mask
        drop = int(np.argmax(mask.any(axis=0)))
        if drop == 0:
            raise RuntimeError("KV cache full with no shared padding to drop")
        return copy_positions(self.model, cache, drop, cache.length, cache.max_length), mask[:, drop:]

    def _seen_tokens(self, active: list[_Row], vocab: int) -> np.ndarray:
        seen = np.zeros((len(active), vocab), dtype=bool)
        for i, row in enumerate(active):
            seen[i, row.prompt] = True
        return seen

    def _choose(self, active: list[_Row], logits: np.ndarray, seen: np.ndarray | None) -> None:
        """Pick each row's next token from its logits [rows, vocab] and record it."""
        usable = usable_vocab(self.model, self.tokenizer)
        logits[:, usable:] = -np.inf
        for i, row in enumerate(active):
            if row.first_choices is not None and not row.tokens and row.finish_reason is None:
                only_choices(logits[i:i + 1], row.first_choices)
        raw_logprobs = log_softmax(logits)
        scores = logits
        if seen is not None:
            scores = logits.copy()
            apply_repetition_penalty(scores, seen, np.array([row.config.repetition_penalty for row in active]))
        eos = self.tokenizer.eos_token_id
        for i, row in enumerate(active):
            config = row.config
            if eos is not None and eos < usable and len(row.tokens) < config.min_new_tokens:
                scores[i, eos] = -np.inf
            if config.is_greedy:
                token = int(np.argmax(scores[i]))
            else:
                token = sample_token(scores[i], config.temperature, config.top_k, config.top_p, row.rng)
            row.accept(token, raw_logprobs[i], eos, self._token_text)
            if seen is not None:
                seen[i, token] = True

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


def stream(model, tokenizer, requests: list[Request], prompt_cache: PromptCache | None = None) -> Stream:
    """Generate for `requests` (each with its own config) as one batch, yielding text deltas.

    Rows are numbered request by request, sequence by sequence. A single-row
    stream reuses and refills `prompt_cache` when one is given.
    """
    return Stream(model, tokenizer, list(requests), prompt_cache)


def generate(model, tokenizer, prompt_ids: list[list[int]], config: GenerationConfig) -> list[list[Sequence]]:
    """`config.num_return_sequences` finished sequences for each prompt."""
    config.validate()
    if config.decode_strategy == "beam_search":
        return beam_search(model, tokenizer, prompt_ids, config)
    prompts = [check_prompt(model, p, config.max_new_tokens, f"prompt_ids[{i}]") for i, p in enumerate(prompt_ids)]
    run = Stream(model, tokenizer, [Request(p, config) for p in prompts])
    for _ in run:
        pass
    n = config.num_return_sequences
    sequences = [row.sequence() for row in run.rows]
    return [sequences[i:i + n] for i in range(0, len(sequences), n)]

"""Beam search, Hugging Face style.

Each prompt keeps `num_beams` running beams. A step ranks every (beam, token)
continuation by summed logprob and takes the best 2 * num_beams: those ending
in EOS or completing a stop string become finished hypotheses if ranked within
the first num_beams, the rest fill the next beams. A hypothesis scores
sum_logprobs / new_length ** length_penalty, its length counting the EOS token.
A prompt is done when num_beams hypotheses are finished and no running beam
can still beat the worst of them (or, with early_stopping, as soon as they are
finished), or at max_new_tokens, when the running beams are finished too.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .batching import (check_prompt, heal_prompt, left_pad, only_choices, PAD_ID, prefill, select_rows, step,
                       usable_vocab)
from .config import GenerationConfig
from .detokenize import IncrementalText
from .outputs import Sequence
from .processors import apply_repetition_penalty, log_softmax, top_alternatives
from .stopping import find_stop


class _Node(NamedTuple):
    """A beam's last token; beams share their history through `parent`."""
    token: int
    logprob: float
    top: dict[str, float] | None
    parent: "_Node | None"


class _Beam(NamedTuple):
    last: _Node | None
    sum_logprobs: float
    tail: bytes          # the last bytes of its text, enough to spot a stop string


class _Hypothesis(NamedTuple):
    score: float
    last: _Node | None
    finish_reason: str


def _history(node: _Node | None) -> list[_Node]:
    nodes = []
    while node is not None:
        nodes.append(node)
        node = node.parent
    return nodes[::-1]


class _PromptSearch:
    """The beams and finished hypotheses of one prompt."""

    def __init__(self, config: GenerationConfig, tokenizer, stop_window: int, healed: str = "",
                 first_choices: list[int] | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.stop_window = stop_window
        # a healed prompt's last token is regenerated: the first token must start with its text,
        # which stays out of the results and cannot be part of a stop string that ends within it
        self.healed = healed
        self.first_choices = first_choices
        self.stops = [s.encode("utf-8") for s in config.stop]
        n = config.num_beams
        # only the first beam is live at the start, so the first step draws n different tokens
        self.beams = [_Beam(None, 0.0 if i == 0 else -math.inf, b"") for i in range(n)]
        self.finished: list[_Hypothesis] = []
        self.done = False

    def advance(self, logprobs: np.ndarray, raw_logprobs: np.ndarray, length: int) -> list[tuple[int, int]]:
        """Extend the beams by one token (the `length`-th); return (parent beam, token) per next beam.

        logprobs are the processed ones that rank continuations [num_beams, vocab];
        raw_logprobs are reported with the tokens.
        """
        config, n = self.config, self.config.num_beams
        vocab = logprobs.shape[1]
        totals = (np.array([b.sum_logprobs for b in self.beams])[:, None] + logprobs).ravel()
        k = min(2 * n, totals.size)
        best = np.argpartition(-totals, k - 1)[:k]
        best = best[np.lexsort((best, -totals[best]))]
        eos = self.tokenizer.eos_token_id
        running: list[tuple[int, int, _Beam]] = []
        for rank, flat in enumerate(best):
            total = float(totals[flat])
            if total == -math.inf:
                break
            parent, token = divmod(int(flat), vocab)
            beam = self.beams[parent]
            if token == eos:
                if rank < n:
                    self._add(beam.last, total, length, "stop")
                continue
            node = _Node(token, float(raw_logprobs[parent, token]),
                         self._top(raw_logprobs[parent]), beam.last)
            tail, stopped = self._text_tail(beam.tail, token, first=length == 1)
            if stopped:
                if rank < n:
                    self._add(node, total, length, "stop")
                continue
            running.append((parent, token, _Beam(node, total, tail)))
            if len(running) == n:
                break
        if length == config.max_new_tokens:
            for _, _, beam in running:
                self._add(beam.last, beam.sum_logprobs, length, "length")
            self.done = True
        elif not running:
            self.done = True
        else:
            self.done = self._cannot_improve(max(b.sum_logprobs for _, _, b in running), length)
        dead = _Beam(None, -math.inf, b"")
        running += [(0, PAD_ID, dead)] * (n - len(running))
        self.beams = [beam for _, _, beam in running]
        return [(parent, token) for parent, token, _ in running]

    def _top(self, raw_logprobs: np.ndarray) -> dict[str, float] | None:
        if self.config.logprobs is None:
            return None
        return top_alternatives(raw_logprobs, self.config.logprobs, lambda t: self.tokenizer.decode([t]))

    def _text_tail(self, tail: bytes, token: int, first: bool) -> tuple[bytes, bool]:
        if not self.stops:
            return b"", False
        # a stop string counts if it ends in the new token's bytes: any stop it completes lies
        # within the window, earlier ones would have ended the beam already
        data = tail + self.tokenizer.decode_bytes([token])
        already_seen = len(self.healed.encode("utf-8")) if first else len(tail)
        stopped = find_stop(data, self.stops, min_end=already_seen) >= 0
        return data[-self.stop_window:], stopped

    def _add(self, last: _Node | None, total: float, length: int, reason: str) -> None:
        score = total / length ** self.config.length_penalty
        if len(self.finished) == self.config.num_beams and score <= self.finished[-1].score:
            return
        self.finished.append(_Hypothesis(score, last, reason))
        self.finished.sort(key=lambda h: -h.score)
        del self.finished[self.config.num_beams:]

    def _cannot_improve(self, best_running: float, length: int) -> bool:
        """Whether no continuation of the running beams can enter the finished hypotheses."""
        config = self.config
        if len(self.finished) < config.num_beams:
            return False
        if config.early_stopping:
            return True
        # logprobs are <= 0, so sums only fall; the normaliser is best at the
        # longest length for a positive penalty and the shortest otherwise
        lp = config.length_penalty
        best_length = config.max_new_tokens if lp > 0 else length + 1
        return best_running / best_length ** lp <= self.finished[-1].score

    def results(self) -> list[Sequence]:
        out = []
        for hyp in self.finished[:self.config.num_return_sequences]:
            nodes = _history(hyp.last)
            text = IncrementalText(self.tokenizer, self.config.stop, hidden=self.healed)
            for node in nodes:
                if text.add(node.token):
                    break
            text.finish()
            kept = nodes[:text.released_tokens]
            top = [node.top for node in kept] if self.config.logprobs is not None else None
            out.append(Sequence([node.token for node in kept], text.text, hyp.finish_reason, float(hyp.score),
                                [node.logprob for node in kept], top))
        return out


def beam_search(model, tokenizer, prompt_ids: list[list[int]], config: GenerationConfig) -> list[list[Sequence]]:
    """The `config.num_return_sequences` best hypotheses of each prompt, best first."""
    config.validate()
    if config.decode_strategy != "beam_search":
        raise ValueError(f"beam_search needs decode_strategy='beam_search', got {config.decode_strategy!r}")
    prompts = [check_prompt(model, p, config.max_new_tokens, f"prompt_ids[{i}]") for i, p in enumerate(prompt_ids)]
    if not prompts:
        return []
    n = config.num_beams
    stop_window = max((len(s.encode("utf-8")) for s in config.stop), default=0) + 4
    usable = usable_vocab(model, tokenizer)
    searches = []
    for i, prompt in enumerate(prompts):
        prompts[i], healed, first_choices = heal_prompt(tokenizer, prompt, usable)
        searches.append(_PromptSearch(config, tokenizer, stop_window, healed, first_choices))

    ids, mask = left_pad(prompts, PAD_ID)
    cache = model.new_cache(len(prompts), max_length=ids.shape[1] + config.max_new_tokens)
    logits = prefill(model, cache, ids, mask)
    rows = np.repeat(np.arange(len(prompts)), n)
    select_rows(cache, rows.tolist())
    mask, logits = mask[rows], logits[rows]
    seen = None
    if config.repetition_penalty != 1.0:
        seen = np.zeros(logits.shape, dtype=bool)
        for row, prompt_index in enumerate(rows):
            seen[row, prompts[prompt_index]] = True
    eos = tokenizer.eos_token_id

    active = list(searches)
    for length in range(1, config.max_new_tokens + 1):
        logits[:, usable:] = -np.inf
        if length == 1:
            for a, search in enumerate(active):
                if search.first_choices is not None:
                    only_choices(logits[a * n:(a + 1) * n], search.first_choices)
        raw_logprobs = log_softmax(logits)
        if seen is not None:
            apply_repetition_penalty(logits, seen, np.full(len(logits), config.repetition_penalty))
        if eos is not None and eos < logits.shape[1] and length <= config.min_new_tokens:
            logits[:, eos] = -np.inf
        logprobs = log_softmax(logits)
        next_rows, next_tokens, still = [], [], []
        for a, search in enumerate(active):
            block = slice(a * n, (a + 1) * n)
            chosen = search.advance(logprobs[block], raw_logprobs[block], length)
            if not search.done:
                still.append(search)
                next_rows += [a * n + parent for parent, _ in chosen]
                next_tokens += [token for _, token in chosen]
        active = still
        if not active:
            break
        select_rows(cache, next_rows)
        mask = np.concatenate([mask[next_rows], np.ones((len(next_rows), 1), dtype=np.int64)], axis=1)
        if seen is not None:
            seen = seen[next_rows]
            seen[np.arange(len(next_rows)), next_tokens] = True
        logits = step(model, cache, next_tokens, mask)
    return [search.results() for search in searches]

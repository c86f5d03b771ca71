"""Reuse of the key/value cache across single-row requests that share a prefix.

Editors resend nearly the same prompt on every keystroke; recomputing only the
tokens after the longest shared prefix turns a full prefill into a few positions.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .batching import copy_positions


class PromptCache:
    """The most recently used (token ids, KV cache) pairs of batch-1 generations, at most
    `max_entries` of them holding at most `max_bytes` of buffers (None: no byte limit).

    Without a byte limit memory is bounded by `max_entries` caches of at most the model's
    context each (a CodeGen-350M cache of 2048 positions in float32 is about 335 MB).
    Entries are never written to: a request gets a copy of the shared prefix.
    """

    def __init__(self, max_entries: int = 4, max_bytes: int | None = None):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0          # held by the entries' buffers
        self._entries: OrderedDict[int, tuple[np.ndarray, object]] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()
        # totals since creation, for monitoring
        self.lookups = self.hits = self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def start(self, model, prompt_ids: list[int], max_length: int):
        """A fresh cache of `max_length` positions with the longest cached prefix of the prompt.

        Returns (cache, reused, source): the caller feeds `prompt_ids[reused:]`, and may
        pass `source` (the entry reused, or None) to `put` as the entry it replaces. The
        prompt's last token is never reused, since its logits are needed.
        """
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        best_key, best = None, 0
        with self._lock:
            for key, (tokens, _) in self._entries.items():
                shared = _common_prefix(tokens, prompt[:-1])
                if shared > best:
                    best_key, best = key, shared
            self.lookups += 1
            if best_key is None:
                return model.new_cache(1, max_length=max_length), 0, None
            self._entries.move_to_end(best_key)
            source = self._entries[best_key][1]
            self.hits += 1
            self.reused_tokens += best
        return copy_positions(model, source, 0, best, max_length), best, best_key

    def put(self, token_ids: list[int], cache, replaces: int | None = None) -> None:
        """Remember `cache` (batch 1), which holds exactly `token_ids`. It must not be written to afterwards.

        `replaces` (the `source` that `start` gave) goes when the new entry shares at least 3/4 of
        it: the same editor has moved on, and what only the old entry holds (mostly a completion
        the user typed past) is rarely asked for again. One entry per editor then suffices.
        """
        tokens = np.asarray(token_ids, dtype=np.int64)
        if cache.batch_size != 1 or cache.length != len(tokens):
            raise ValueError(f"a prompt cache entry needs a batch-1 cache of its {len(tokens)} tokens, "
                             f"got batch {cache.batch_size} of length {cache.length}")
        with self._lock:
            # an entry the new one extends can only ever reuse less
            stale = [k for k, (old, _) in self._entries.items() if _common_prefix(old, tokens) == len(old)]
            if replaces in self._entries:
                old = self._entries[replaces][0]
                if 4 * _common_prefix(old, tokens) >= 3 * len(old):
                    stale.append(replaces)
            for key in set(stale):
                self._drop(key)
            self._entries[self._next_key] = (tokens, cache)
            self.bytes += _nbytes(cache)
            self._next_key += 1
            while len(self._entries) > self.max_entries or (self.max_bytes is not None and self.bytes > self.max_bytes):
                self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        self.bytes -= _nbytes(self._entries.pop(key)[1])


def _nbytes(cache) -> int:
    return sum(int(t.numel()) * t.element_size() for t in cache.keys + cache.values)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the shared prefix. Every lookup compares the prompt with every entry and most
    entries (other editors' files) differ early: stretches that double from 64 tokens find that
    without comparing whole prompts."""
    n = min(len(a), len(b))
    start, width = 0, 64
    while start < n:
        end = min(n, start + width)
        differ = np.flatnonzero(a[start:end] != b[start:end])
        if differ.size:
            return start + int(differ[0])
        start, width = end, 2 * width
    return n

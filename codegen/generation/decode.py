"""The decode loop for greedy search and sampling, streamed or not.

A `Batch` is the loop, one `step()` at a time: requests join it whenever they
come (`add`), their prompts are prefilled a chunk per step beside the running
rows' decode steps, and rows that finish or are cancelled leave at once. The
rows share one KV cache whose positions are a common timeline: each row's
tokens fill a contiguous stretch ending at the present, and its attention mask
hides everything before that stretch, so rows of any length decode together
and each sees exactly what it would alone. Each row keeps one slot (a row of
the cache) from joining to leaving: joining copies only its own prompt in,
leaving copies nothing, and the cache is laid out anew only when the timeline
runs out of room. `stream` and `generate` run a batch of requests added up
front until it is empty.

Rows with `prompt_lookup_num_tokens` K feed up to K drafted tokens (see
`lookup`) after their next one, and keep the drafts the model agrees with, plus
the model's own token after them: several tokens from one forward pass. The
timeline stays common, so the cache keeps, for every row, only as many of the
step's positions as the row that kept the fewest; a row that kept more feeds
its remaining accepted tokens again at the next step (`_Row.fed` counts those
in the cache). The rest of the step's positions (rejected drafts, and the
padding of rows that fed fewer tokens) are rolled back. So one row alone, the
editor's case, gains every accepted draft, and rows sharing a step gain what
they all accepted.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import paddle

from ..models.cache import write_positions
from .batching import PAD_ID, PREFILL_POSITIONS, check_prompt, heal_prompt, only_choices, step_tokens, usable_vocab
from .beam import beam_search
from .config import GenerationConfig
from .detokenize import IncrementalText
from .outputs import Sequence, StreamEvent
from .lookup import MAX_DRAFT_TOKENS, Lookup
from .processors import apply_repetition_penalty, log_softmax, sample_given_draft, sample_token, top_alternatives
from .prompt_cache import PromptCache

# Spare positions given to the shared cache when it grows, so the timeline advances
# this many steps before the cache is laid out anew (a copy of every row).
TIMELINE_SLACK = 256
# Prompt caches are allocated in multiples of this many positions: the allocator
# can then reuse a freed prompt-cache entry's memory for the next prompt instead
# of fragmenting into many sizes.
CACHE_SIZE_STEP = 128


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
        self.slot = -1          # its row in the batch's shared cache, once joined
        self.start = 0          # where the row's first token sits on the batch's shared timeline
        self.joined = 0         # where its first generated token was fed
        self.prefill: _Prefill | None = None   # its prompt's own cache, kept for the prompt cache
        self.seen: np.ndarray | None = None    # tokens so far, for the repetition penalty
        self.fed = 0            # generated tokens in the cache: all but the last, or fewer after lookup
        k = config.prompt_lookup_num_tokens
        self.lookup = Lookup(prompt, min(k, MAX_DRAFT_TOKENS)) if k else None

    @property
    def steps_left(self) -> int:
        """Positions it may still need: it feeds every token but its last."""
        return self.config.max_new_tokens - 1 - self.fed

    def drafts(self) -> list[int]:
        """Prompt-lookup guesses of its next tokens: as many as it may still accept beside the
        model's own next token, and fed with its unfed tokens, at most 1 + the lookup's current
        length (at most K) positions."""
        if self.lookup is None:
            return []
        count = min(self.lookup.length + self.fed + 1 - len(self.tokens),
                    self.config.max_new_tokens - len(self.tokens) - 1)
        return self.lookup.draft(self.tokens, count)

    def accept(self, token: int, logprob: float, eos: int | None, token_text,
               logprobs: np.ndarray | None = None) -> None:
        """Record the chosen token with its raw log-probability; `logprobs`, the row's raw log-softmax,
        is needed only when the row reports alternatives."""
        if token == eos:
            self.eos_logprob = logprob
            self.finish("stop")
            return
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if self.top is not None:
            self.top.append(top_alternatives(logprobs, self.config.logprobs, token_text))
        if self.text.add(token):
            self.finish("stop")
        elif len(self.tokens) == self.config.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
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


class _Prefill:
    """A request's prompt on its way into the batch: fed into a cache of its own, a chunk at a time."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows
        self.prompt = rows[0].prompt
        self.cache = None
        self.fed = 0            # prompt tokens the cache holds
        self.source = None      # the prompt-cache entry it started from
        self.logits: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return self.logits is not None


class Batch:
    """The running rows of every request added so far; `step()` advances them all by one token.

    `add` checks a request and queues it; it joins at the next `step`. Each step
    first drops cancelled and ended rows, joins prefilled requests, runs one
    decode step over the joined rows, then spends up to `prefill_chunk` prompt
    positions (None: no limit) on waiting prompts, oldest first; a prompt
    whose prefill completes gets its first token at once. `cancel(index)` and
    `end(index)` are safe from another thread. With `prompt_cache`, each prompt
    starts from its longest cached prefix, and single-row requests store
    their cache for the next ones when they leave.
    """

    def __init__(self, model, tokenizer, prompt_cache: PromptCache | None = None,
                 prefill_chunk: int | None = None):
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of positions or None, got {prefill_chunk}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_cache = prompt_cache
        self.prefill_chunk = prefill_chunk
        self.decode_steps = 0
        self.drafted = 0        # prompt-lookup tokens proposed ...
        self.accepted = 0       # ... and kept
        self._next_index = 0
        self._prefills: list[_Prefill] = []     # waiting for or in prefill
        self._ready: list[_Prefill] = []        # prefilled, waiting for room in the shared cache
        self._slots: list[_Row | None] = []     # the shared cache's rows: who decodes in each
        self._cache = None                      # kept when the batch empties, for the next rows
        self._usable = usable_vocab(model, tokenizer)
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._ended: set[int] = set()

    # -- any thread ----------------------------------------------------------------

    def cancel(self, index: int) -> None:
        """Drop row `index` before the next step; it reports nothing more."""
        with self._lock:
            self._cancelled.add(index)

    def end(self, index: int) -> None:
        """Finish row `index` at the next step with what it has and finish_reason 'length'."""
        with self._lock:
            self._ended.add(index)

    # -- the owner's thread ------------------------------------------------------------

    def add(self, prompt_ids: list[int], config: GenerationConfig, where: str = "request") -> list[_Row]:
        """Queue a prompt; returns its rows (their `index` numbers its events). ValueError if it is bad."""
        config = config.validate()
        if config.decode_strategy == "beam_search":
            raise ValueError(f"{where}: beam search cannot be streamed; use generate()")
        prompt = check_prompt(self.model, prompt_ids, config.max_new_tokens, where)
        prompt, healed, first_choices = heal_prompt(self.tokenizer, prompt, self._usable)
        rows = []
        for j in range(config.num_return_sequences):
            # a seed gives each sequence its own stream, whatever else is in the batch
            rng = np.random.default_rng(None if config.seed is None else [config.seed, j])
            rows.append(_Row(self._next_index, prompt, config, rng, self.tokenizer, first_choices, healed))
            self._next_index += 1
        self._prefills.append(_Prefill(rows))
        return rows

    @property
    def _active(self) -> list[_Row]:
        return [row for row in self._slots if row is not None]

    @property
    def rows(self) -> int:
        """Rows not yet finished: decoding, prefilled or waiting for their prefill."""
        return self.decoding + sum(len(p.rows) for p in self._prefills + self._ready)

    @property
    def decoding(self) -> int:
        """Rows in the shared cache, decoded together at each step."""
        return len(self._slots) - self._slots.count(None)

    def __bool__(self) -> bool:
        return self.rows > 0

    def step(self) -> list[StreamEvent]:
        """Advance every row by one step; the events it produced."""
        events = self._drop_cancelled_and_ended()
        self._join_ready()
        active = self._active
        if active:
            # the step runs over the slots from the first used to the last; free ones between
            # ride along, seeing only their own new positions
            low, high = active[0].slot, active[-1].slot + 1
            feeds = {row: row.tokens[row.fed:] + row.drafts() for row in active}
            width = max(len(feed) for feed in feeds.values())
            length = self._cache.length
            starts = np.full(high - low, length)
            tokens = np.full((high - low, width), PAD_ID, dtype=np.int64)
            for row, feed in feeds.items():
                starts[row.slot - low] = row.start
                tokens[row.slot - low, :len(feed)] = feed
            mask = (np.arange(length + width)[None, :] >= starts[:, None]).astype(np.int64)
            view = self._cache.rows(low, high)
            logits = step_tokens(self.model, view, tokens, mask)
            if view is not self._cache:
                self._cache.advance(width)
            self.decode_steps += 1
            if width == 1:
                self._choose(active, logits[[row.slot - low for row in active], 0])
                kept = {row: 1 for row in active}
            else:
                kept = self._verify(active, logits[[row.slot - low for row in active]], feeds)
            self._roll_back(length, kept)
            events += self._events(active)
            self._leave([row for row in active if row.finish_reason is not None])
        events += self._prefill()
        return events

    def _verify(self, rows: list[_Row], logits: np.ndarray, feeds: dict) -> dict:
        """Choose each row's tokens from its step's logits [rows, width, vocab], position by position
        while its drafts agree with what it chose; how many of its fed positions each row keeps."""
        unfed = {row: len(row.tokens) - row.fed for row in rows}
        drafts = {row: feeds[row][unfed[row]:] for row in rows}
        kept = dict(unfed)
        checking = list(range(len(rows)))
        # the logits after a row's last chosen token predict its first draft, and so on
        for j in range(logits.shape[1]):
            at = [(i, unfed[rows[i]] - 1 + j) for i in checking]
            going = [rows[i] for i, _ in at]
            guesses = [drafts[row][j] if j < len(drafts[row]) else None for row in going]
            self._choose(going, logits[tuple(zip(*at))], guesses)
            checking = [i for (i, _), guess in zip(at, guesses)
                        if guess is not None and rows[i].finish_reason is None and rows[i].tokens[-1] == guess]
            for i in checking:
                kept[rows[i]] += 1
            if not checking:
                break
        for row in rows:
            self.drafted += len(drafts[row])
            self.accepted += kept[row] - unfed[row]
            if row.lookup is not None:
                row.lookup.record(len(drafts[row]), kept[row] - unfed[row])
        return kept

    def _roll_back(self, length: int, kept: dict) -> None:
        """Keep the step's first positions up to the fewest any running row kept; forget the rest.

        Finished rows do not hold the others back: they leave now, keeping what they may for
        the prompt cache."""
        running = [n for row, n in kept.items() if row.finish_reason is None]
        advance = min(running) if running else max(kept.values())
        self._cache.truncate(length + advance)
        for row, n in kept.items():
            row.fed += min(n, advance)

    # -- the timeline --------------------------------------------------------------------

    def _drop_cancelled_and_ended(self) -> list[StreamEvent]:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            ended, self._ended = self._ended, set()
        if not (cancelled or ended):
            return []
        events = []
        for prefill in self._prefills + self._ready:
            for row in prefill.rows:
                if row.index in ended:
                    row.finish("length")
                    events += self._events([row])
            prefill.rows = [row for row in prefill.rows
                            if row.index not in cancelled and row.finish_reason is None]
        self._prefills = [p for p in self._prefills if p.rows]
        self._ready = [p for p in self._ready if p.rows]
        active = self._active
        for row in active:
            if row.index in ended:
                row.finish("length")
        events += self._events([row for row in active if row.index in ended])
        self._leave([row for row in active if row.index in cancelled or row.finish_reason is not None])
        return events

    def _leave(self, gone: list[_Row]) -> None:
        for row in gone:
            if row.prefill is not None:
                self._remember(row)
            self._slots[row.slot] = None
        if not self.decoding and self._cache is not None:
            self._cache.truncate(0)     # an empty batch starts its timeline afresh, in the same buffers

    def _remember(self, row: _Row) -> None:
        """Give the prompt cache this row's keys and values: its prompt's own cache, extended by
        the tokens it generated (copied out of its slot)."""
        own, generated = row.prefill.cache, row.fed
        generated = min(generated, own.max_length - own.length)
        for layer, (keys, values) in enumerate(zip(self._cache.keys, self._cache.values)):
            end = row.joined + generated
            own.update(layer, keys[row.slot:row.slot + 1, :, row.joined:end],
                       values[row.slot:row.slot + 1, :, row.joined:end])
        own.advance(generated)
        self.prompt_cache.put((row.prompt + row.tokens)[:own.length], own, replaces=row.prefill.source)
        row.prefill = None

    def _join_ready(self) -> None:
        """Move prefilled requests into the shared cache, oldest first, while they fit the context."""
        while self._ready and self._join(self._ready[0]):
            self._ready.pop(0)

    def _join(self, prefill: _Prefill) -> bool:
        """Copy `prefill`'s prompt into free slots, ending at the present; False if the timeline would
        outgrow the context.

        The timeline must be at least as long as the prompt, and have room for every
        row to generate all it may: when it has not, the cache is laid out anew
        starting at the oldest row's start (older rows shift right when the prompt is longer).
        """
        active = self._active
        length, new = len(prefill.prompt), len(prefill.rows)
        now = self._cache.length if self._cache is not None else 0

        def room_needed(present: int) -> int:
            return present + max([row.steps_left for row in active + prefill.rows])

        free = [slot for slot, row in enumerate(self._slots) if row is None]
        fits = (self._cache is not None and len(free) >= new
                and room_needed(max(now, length)) <= self._cache.max_length)
        if fits and not active:
            now = length            # nothing to keep: the timeline starts where the prompt ends
            self._cache.truncate(0)
            self._cache.advance(now)
        elif not fits or now < length:
            kept = now - min((row.start for row in active), default=now)
            now = max(kept, length)
            if room_needed(now) > self.model.config.max_position_embeddings and active:
                return False
            self._lay_out(now - kept, kept, room_needed(now), max(len(self._slots), self.decoding + new, self.rows))
            free = [slot for slot, row in enumerate(self._slots) if row is None]
        for slot, row in zip(free, prefill.rows):
            for layer, (keys, values) in enumerate(zip(self._cache.keys, self._cache.values)):
                write_positions(keys, now - length, prefill.cache.keys[layer][:, :, :length], slot)
                write_positions(values, now - length, prefill.cache.values[layer][:, :, :length], slot)
            row.slot, row.start, row.joined = slot, now - length, now
            self._slots[slot] = row
        if self.prompt_cache is not None and prefill.rows[0].config.num_return_sequences == 1:
            prefill.rows[0].prefill = prefill
        else:
            prefill.cache = None
        return True

    def _lay_out(self, shift: int, kept: int, needed: int, slots: int) -> None:
        """Move the last `kept` positions of the timeline to start at `shift`, in a cache of at least
        `slots` rows with room for `needed` positions.

        The cache is replaced only to grow, with slack: a server's then settles at one size
        and is reused for good, instead of leaving the allocator a trail of freed sizes.
        """
        old = self._cache
        cache = old
        if old is None or slots > old.batch_size or needed > old.max_length:
            room = max(min(self.model.config.max_position_embeddings, needed + TIMELINE_SLACK),
                       old.max_length if old is not None else 0)
            cache = self.model.new_cache(max(slots, old.batch_size if old is not None else 0), max_length=room)
        moved = shift + kept - (old.length if old is not None else 0)
        if kept and (moved or cache is not old):
            rows = len(self._slots)
            for name in ("keys", "values"):
                for target, source in zip(getattr(cache, name), getattr(old, name)):
                    # a copy first: in place, the source and target stretches overlap
                    target[:rows, :, shift:shift + kept] = source[:rows, :, old.length - kept:old.length].clone()
        for row in self._active:
            row.start += moved
            row.joined += moved
        cache.truncate(0)
        cache.advance(shift + kept)
        self._cache = cache
        self._slots += [None] * (cache.batch_size - len(self._slots))

    # -- prefill -------------------------------------------------------------------------

    def _prefill(self) -> list[StreamEvent]:
        budget = self.prefill_chunk if self.prefill_chunk is not None else float("inf")
        events = []
        while self._prefills and budget > 0:
            prefill = self._prefills[0]
            if prefill.cache is None:
                self._start(prefill)
            end = int(min(len(prefill.prompt), prefill.fed + budget, prefill.fed + PREFILL_POSITIONS))
            ids = paddle.to_tensor(np.asarray([prefill.prompt[prefill.fed:end]], dtype=np.int64))
            with paddle.no_grad():
                logits = self.model(ids, cache=prefill.cache, last_only=True)
            budget -= end - prefill.fed
            prefill.fed = end
            if end < len(prefill.prompt):
                continue
            self._prefills.pop(0)
            rows = prefill.rows
            self._choose(rows, np.repeat(logits[:, -1].numpy(), len(rows), axis=0))
            events += self._events(rows)
            prefill.rows = [row for row in rows if row.finish_reason is None]
            if prefill.rows:
                self._ready.append(prefill)
        return events

    def _start(self, prefill: _Prefill) -> None:
        """A cache for the prompt, holding its longest cached prefix when there is a prompt cache."""
        length = len(prefill.prompt)
        if self.prompt_cache is not None:
            # room for the generated tokens too: a single row's cache goes into the prompt cache
            config = prefill.rows[0].config
            room = length + (config.max_new_tokens if config.num_return_sequences == 1 else 0)
            room = min(-(-room // CACHE_SIZE_STEP) * CACHE_SIZE_STEP, self.model.config.max_position_embeddings)
            prefill.cache, prefill.fed, prefill.source = self.prompt_cache.start(self.model, prefill.prompt, room)
        else:
            prefill.cache = self.model.new_cache(1, max_length=length)
        for row in prefill.rows:
            if row.config.repetition_penalty != 1.0:
                row.seen = np.zeros(self.model.config.vocab_size, dtype=bool)
                row.seen[row.prompt] = True

    # -- choosing tokens -------------------------------------------------------------------

    def _events(self, rows: list[_Row]) -> list[StreamEvent]:
        return [event for event in (row.event() for row in rows) if event is not None]

    def _choose(self, rows: list[_Row], logits: np.ndarray, drafts: list[int | None] | None = None) -> None:
        """Pick each row's next token from its logits [rows, vocab] and record it; a sampling row
        with a draft token keeps it as often as its distribution allows (`sample_given_draft`)."""
        usable = self._usable
        logits[:, usable:] = -np.inf
        for i, row in enumerate(rows):
            if row.first_choices is not None and not row.tokens:
                only_choices(logits[i:i + 1], row.first_choices)
        # the chosen token's log-probability needs only each row's log-sum-exp; the whole
        # log-softmax (a few passes over the vocabulary) only rows reporting alternatives
        peak = logits.max(axis=-1, keepdims=True)
        shifted = logits - peak
        log_total = np.log(np.exp(shifted, out=shifted).sum(axis=-1))
        scores = logits
        if any(row.seen is not None for row in rows):
            scores = logits.copy()
            seen = np.zeros(scores.shape, dtype=bool)
            for i, row in enumerate(rows):
                if row.seen is not None:
                    seen[i] = row.seen[:scores.shape[1]]
            apply_repetition_penalty(scores, seen, np.array([row.config.repetition_penalty for row in rows]))
        eos = self.tokenizer.eos_token_id
        for i, row in enumerate(rows):
            config = row.config
            row_scores = scores[i]
            if eos is not None and eos < usable and len(row.tokens) < config.min_new_tokens:
                row_scores = row_scores.copy()      # the logits stay raw for the log-probabilities
                row_scores[eos] = -np.inf
            if config.is_greedy:
                token = int(np.argmax(row_scores))
            elif drafts is not None and drafts[i] is not None:
                token = sample_given_draft(row_scores, drafts[i], config.temperature, config.top_k, config.top_p,
                                           row.rng)
            else:
                token = sample_token(row_scores, config.temperature, config.top_k, config.top_p, row.rng)
            logprob = float(logits[i, token] - peak[i, 0] - log_total[i])
            row.accept(token, logprob, eos, self._token_text,
                       log_softmax(logits[i]) if row.top is not None else None)
            if row.seen is not None:
                row.seen[token] = True

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


class Stream:
    """Iterator of `StreamEvent`s for a batch of requests, returned by `stream`.

    `cancel(index)` (safe from another thread) drops that row before the next
    decode step and it reports nothing more; `close()` ends everything. All input
    checks happen when the stream is created, before the first event.
    """

    def __init__(self, model, tokenizer, requests: list[Request], prompt_cache: PromptCache | None = None):
        self.batch = Batch(model, tokenizer, prompt_cache)
        self.rows: list[_Row] = []
        for i, request in enumerate(requests):
            if not isinstance(request, Request):
                raise ValueError(f"requests[{i}] must be a Request, got {type(request).__name__}")
            self.rows += self.batch.add(request.prompt_ids, request.config, f"requests[{i}]")
        self._events = self._run()

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def cancel(self, index: int) -> None:
        if not 0 <= index < len(self.rows):
            raise ValueError(f"no row {index} in a stream of {len(self.rows)} rows")
        self.batch.cancel(index)

    def close(self) -> None:
        self._events.close()

    def _run(self) -> Iterator[StreamEvent]:
        while self.batch:
            yield from self.batch.step()


def stream(model, tokenizer, requests: list[Request], prompt_cache: PromptCache | None = None) -> Stream:
    """Generate for `requests` (each with its own config) as one batch, yielding text deltas.

    Rows are numbered request by request, sequence by sequence. Each request's
    prompt starts from its longest prefix in `prompt_cache` when one is given.
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

"""What generation hands back: finished sequences and stream deltas."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sequence:
    """One finished continuation.

    `token_ids` are the new tokens without EOS; after a stop string, only those
    whose text lies wholly before it (see `IncrementalText`). `text` is the new
    text with the stop string and everything after it removed. `finish_reason` is
    'stop' (EOS or a stop string) or 'length'. `score`: for greedy and sampling the
    sum of `token_logprobs` plus the EOS token's logprob when EOS ended it; for
    beam search the beam's length-normalised score. `token_logprobs` are
    log-softmax of the model's raw logits (before penalties, temperature, top-k/p);
    `top_logprobs` has the `config.logprobs` best alternatives per token, or None.
    """
    token_ids: list[int]
    text: str
    finish_reason: str
    score: float
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None


@dataclass
class StreamEvent:
    """A delta of row `index` (request i's sequence j, counted in request order).

    `token_ids`/`logprobs`/`top_logprobs` are the tokens released with `text`; a
    row's deltas concatenate to its `Sequence`. `finish_reason` is set on the
    row's last event only.
    """
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None = None

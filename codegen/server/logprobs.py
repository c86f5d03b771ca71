"""OpenAI's `logprobs` object, and the prompt scores that `echo` needs.

Tokens are shown as the generation code shows its alternatives, by
`tokenizer.decode([id])`, so a token's string is a key of its step's
`top_logprobs` whenever it is among them.
"""
from __future__ import annotations

import codecs

SCORE_CHUNK = 512   # prompt positions per forward pass when scoring


class LogprobsBuilder:
    """One choice's logprobs, a delta at a time; `text_offset` counts characters of the choice's text."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        # offsets follow the text as decoded: a character split over tokens counts once, at its end
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._offset = 0

    def add(self, token_ids, logprobs, top_logprobs) -> dict:
        """The logprobs object for these tokens; top_logprobs is per token a {text: logprob} or None."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, token_id in enumerate(token_ids):
            out["tokens"].append(self._tokenizer.decode([token_id]))
            out["token_logprobs"].append(logprobs[i])
            out["top_logprobs"].append(top_logprobs[i] if top_logprobs is not None else None)
            out["text_offset"].append(self._offset)
            self._offset += len(self._decoder.decode(self._tokenizer.decode_bytes([token_id])))
        return out


def merge(into: dict | None, more: dict) -> dict:
    if into is None:
        return {key: list(values) for key, values in more.items()}
    for key, values in more.items():
        into[key].extend(values)
    return into


def score_prompt(model, tokenizer, ids: list[int], top: int):
    """Log-probabilities of each prompt token given the ones before it, from the raw logits.

    Returns (logprobs, top_logprobs), both None for the first token, which
    nothing predicts; top_logprobs[i] holds the `top` most likely tokens at
    position i as {text: logprob}, as generation reports its alternatives.
    """
    import numpy as np
    import paddle

    from ..generation.processors import log_softmax, top_alternatives

    vocab = min(len(tokenizer), model.config.vocab_size)   # ids past the tokenizer have no text
    logprobs, tops = [None], [None]
    cache = model.new_cache(1, max_length=len(ids))
    with paddle.no_grad():
        # in chunks through a KV cache: logits for a whole long prompt would take gigabytes
        for start in range(0, len(ids) - 1, SCORE_CHUNK):
            end = min(start + SCORE_CHUNK, len(ids) - 1)
            logits = model(paddle.to_tensor([ids[start:end]], dtype="int64"), cache=cache)[0].numpy()
            logits[:, vocab:] = -np.inf
            for row, target in zip(log_softmax(logits), ids[start + 1:end + 1]):
                logprobs.append(float(row[target]))
                tops.append(top_alternatives(row, top, lambda token: tokenizer.decode([token])))
    return logprobs, tops

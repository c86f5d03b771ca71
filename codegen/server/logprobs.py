"""OpenAI's `logprobs` object, built a delta at a time.

Tokens are shown as the generation code shows its alternatives, by
`tokenizer.decode([id])`, so a token's string is a key of its step's
`top_logprobs` whenever it is among them.
"""
from __future__ import annotations

import codecs


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

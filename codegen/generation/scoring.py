"""Log-probabilities of a prompt's own tokens (OpenAI's `echo` with `logprobs`)."""
from __future__ import annotations

import numpy as np
import paddle

from .batching import usable_vocab
from .processors import log_softmax, top_alternatives

SCORE_CHUNK = 512   # prompt positions per forward pass when scoring


def score(model, tokenizer, ids: list[int], top: int):
    """Log-probability of each prompt token given the ones before it, from the raw logits.

    Returns (logprobs, top_logprobs), both None for the first token, which
    nothing predicts; top_logprobs[i] holds the `top` most likely tokens at
    position i as {text: logprob}, as generation reports its alternatives.
    """
    vocab = usable_vocab(model, tokenizer)   # ids past the tokenizer have no text
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

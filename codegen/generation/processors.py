"""Logits processing and token choice on numpy rows.

Order, as in Hugging Face: repetition penalty, min_new_tokens (EOS banned),
temperature, top-k, top-p. Greedy takes the argmax after the first two, which
the last three cannot change.
"""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Along the last axis, in float32; -inf entries stay -inf."""
    peak = logits.max(axis=-1, keepdims=True)
    shifted = logits - peak
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: np.ndarray) -> None:
    """CTRL's penalty in place: tokens already seen get score/p if positive, score*p if negative.

    logits and seen are [rows, vocab]; penalty is [rows] (1 leaves a row alone).
    """
    p = penalty[:, None].astype(logits.dtype)
    penalized = np.where(logits < 0, logits * p, logits / p)
    np.copyto(logits, penalized, where=seen)


def top_alternatives(logprobs: np.ndarray, n: int, token_text) -> dict[str, float]:
    """The `n` most likely tokens of one row as {text: logprob}, most likely first.

    Different ids can decode to the same text (e.g. halves of one character); the
    more likely one keeps the key.
    """
    n = min(n, logprobs.shape[-1])
    if n == 0:
        return {}
    best = np.argpartition(-logprobs, n - 1)[:n]
    best = best[np.lexsort((best, -logprobs[best]))]
    out: dict[str, float] = {}
    for token in best:
        out.setdefault(token_text(int(token)), float(logprobs[token]))
    return out


def sample_token(scores: np.ndarray, temperature: float, top_k: int, top_p: float,
                 rng: np.random.Generator) -> int:
    """Draw one token from a row of (penalized) logits after temperature, top-k and top-p."""
    return _draw(*_distribution(scores, temperature, top_k, top_p), rng)


def sample_given_draft(scores: np.ndarray, draft: int, temperature: float, top_k: int, top_p: float,
                       rng: np.random.Generator) -> int:
    """A token distributed exactly as `sample_token`'s, drawn knowing a guess `draft` (speculative sampling).

    The draft was proposed with certainty (its proposal distribution q is a point mass), so
    the rule "keep it with probability min(1, p/q), else draw from max(0, p - q) normalised"
    becomes: keep it with probability p(draft), else draw from p without the draft. Either
    way token x comes out with probability p(x); the draft is kept as often as possible.
    """
    ids, probs = _distribution(scores, temperature, top_k, top_p)
    is_draft = ids == draft
    kept = float(probs[is_draft].sum())
    if rng.random() < kept or kept >= probs.sum():
        return int(draft)
    return _draw(ids, np.where(is_draft, 0.0, probs), rng)


def _distribution(scores: np.ndarray, temperature: float, top_k: int, top_p: float):
    """(ids, probabilities) that sampling draws from: the top-k and nucleus of softmax(scores / temperature)."""
    ids = np.arange(scores.shape[0])
    # shifted before dividing: a tiny temperature would take raw logits to inf, and inf - inf is NaN;
    # shifted, the best token is at 0 and the others at most overflow to -inf, probability 0
    with np.errstate(over="ignore"):
        values = (scores.astype(np.float64) - scores.max()) / temperature
    if 0 < top_k < values.shape[0]:
        kth = np.partition(values, -top_k)[-top_k]
        keep = values >= kth                      # ties with the k-th all stay
        ids, values = ids[keep], values[keep]
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    if top_p < 1.0:
        keep = _nucleus(probs, top_p)
        ids, probs = ids[keep], probs[keep]
    return ids, probs


def _draw(ids: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(probs)
    # side="right" never lands on a zero-probability (banned) token
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(pick, ids.shape[0] - 1)])


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest most-likely set whose probability reaches top_p.

    Sorting a 50k vocabulary every step is slow and the set is usually small, so
    sort the best few and widen only while they fall short.
    """
    total = probs.shape[0]
    width = min(64, total)
    while True:
        best = np.argpartition(-probs, width - 1)[:width] if width < total else np.arange(total)
        best = best[np.argsort(-probs[best], kind="stable")]
        cumulative = np.cumsum(probs[best])
        # rounding may leave even the whole vocabulary just short of top_p
        if cumulative[-1] >= top_p or width == total:
            return best[:min(int(np.searchsorted(cumulative, top_p)) + 1, width)]
        width = min(4 * width, total)

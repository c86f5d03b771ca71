"""Prompt-lookup drafts: guesses of the next tokens copied from earlier in the text.

Code being edited repeats what the prompt holds (a function rewritten with a
renamed variable, a file typed out again), so the tokens that followed the
last few tokens' earlier occurrence are often what the model will write next.
The decode loop feeds such a draft beside the row's next token and keeps the
part the model agrees with (see `Batch`).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Longest n-gram matched. 3 tokens rarely match by chance in code; shorter tails are tried when
# it finds nothing, down to a single token, which still drafts well inside copied text.
MAX_NGRAM = 3


def draft(history: np.ndarray, count: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of `history`'s last n tokens,
    trying n = max_ngram down to 1; [] when none of them occurred before."""
    if count < 1:
        return []
    for n in range(min(max_ngram, len(history) - 1), 0, -1):
        # windows of history[:-1] end before the last token, so each match has a continuation
        windows = sliding_window_view(history[:-1], n)
        hits = np.flatnonzero((windows == history[-n:]).all(axis=1))
        if hits.size:
            # the latest: nearest the cursor, so most likely the text being rewritten
            start = int(hits[-1]) + n
            return history[start:start + count].tolist()
    return []

"""Stop strings: where one first occurs, and how much text might still start one."""
from __future__ import annotations

from typing import Sequence, TypeVar

Text = TypeVar("Text", str, bytes)


def find_stop(text: Text, stops: Sequence[Text], min_end: int = 0) -> int:
    """Index of the earliest occurrence of any stop string in `text` that ends after `min_end`, or -1.

    Text and stops are both str, or both UTF-8 bytes (then indices count bytes)."""
    found = [i for i in (text.find(s, max(0, min_end - len(s) + 1)) for s in stops) if i >= 0]
    return min(found, default=-1)


def partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that a stop string starts with.

    That suffix must be held back from a stream: the next tokens may complete the
    stop string, and no part of it may reach the reader.
    """
    longest = max((len(s) for s in stops), default=0)
    for length in range(min(len(text), longest - 1), 0, -1):
        suffix = text[-length:]
        if any(s.startswith(suffix) for s in stops):
            return length
    return 0

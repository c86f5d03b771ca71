"""Incremental detokenization: new tokens in, text safe to show out."""
from __future__ import annotations

import codecs

from .stopping import find_stop, partial_stop_length


class IncrementalText:
    r"""One sequence's new tokens turned into text deltas, a token at a time.

    Each token's bytes (`tokenizer.decode_bytes([id])`; byte-level tokenizers
    concatenate) go through an incremental UTF-8 decoder, so a character split
    across tokens appears only once complete. A suffix that could be the start of
    a stop string is held back until it can't be. When a stop string completes,
    the text ends just before it.

    Tokens are released with the text: a token is released once everything it
    decoded to is released and it does not end inside a character. After a stop,
    the tokens kept are those whose text lies wholly before the stop string, so a
    token that straddles the cut is dropped and `tokenizer.decode(kept tokens)` is
    a prefix of `text` (equal to it unless a token straddled the cut).

    `hidden`: the first characters of the decoded tokens that were the prompt's (a healed prompt's
    last token, regenerated): they do not appear in `text`, and a stop string counts only if it ends
    after them, so "\ndef" stops when the prompt's newline is followed by `def`, while a stop "\n"
    does not fire on the prompt's own newline.
    """

    def __init__(self, tokenizer, stops: list[str], hidden: str = ""):
        self._tokenizer = tokenizer
        self._stops = list(stops)
        self._hidden_left = len(hidden)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []       # released text
        self._parts_taken = 0
        self._pending = ""                # decoded, held back
        self._released_chars = 0
        # per token, the decoded length once it is in, or None while it ends mid-character
        self._token_ends: list[int | None] = []
        self.num_tokens = 0               # tokens added
        self.released_tokens = 0
        self._tokens_taken = 0
        self.stopped = False              # a stop string completed

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, token_id: int) -> bool:
        """Take the next token; True once it completes a stop string (add no more after that)."""
        if self.stopped:
            raise RuntimeError("a stop string already ended this text")
        piece = self._decoder.decode(self._tokenizer.decode_bytes([token_id]))
        decoded = self._released_chars + len(self._pending) + len(piece)
        mid_character = bool(self._decoder.getstate()[0])
        self._token_ends.append(None if mid_character else decoded)
        self.num_tokens += 1
        self._release(self._pending + piece, final=False)
        return self.stopped

    def finish(self) -> None:
        """No more tokens: an unfinished character becomes U+FFFD and held-back text is released."""
        if self.stopped:
            return
        piece = self._decoder.decode(b"", final=True)
        if self._token_ends:
            self._token_ends[-1] = self._released_chars + len(self._pending) + len(piece)
        self._release(self._pending + piece, final=True)

    def take(self) -> tuple[str, int, int]:
        """(text, first token, end token) released since the last call."""
        text = "".join(self._parts[self._parts_taken:])
        self._parts_taken = len(self._parts)
        start, self._tokens_taken = self._tokens_taken, self.released_tokens
        return text, start, self.released_tokens

    def _release(self, window: str, final: bool) -> None:
        cut = find_stop(window, self._stops, min_end=self._hidden_left)
        if cut >= 0:
            self.stopped = True
            release = cut
        elif final:
            release = len(window)
        else:
            release = len(window) - partial_stop_length(window, self._stops)
        if release:
            hidden = min(self._hidden_left, release)
            self._hidden_left -= hidden
            if release > hidden:
                self._parts.append(window[hidden:release])
            self._released_chars += release
        self._pending = "" if self.stopped else window[release:]
        self._release_tokens()

    def _release_tokens(self) -> None:
        # ends of whole-character tokens never decrease, so scan on from the last release
        for i in range(self.released_tokens, self.num_tokens):
            end = self._token_ends[i]
            if end is None:
                continue
            if end > self._released_chars:
                break
            self.released_tokens = i + 1

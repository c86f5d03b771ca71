"""Prompt-lookup drafts: guesses of the next tokens copied from earlier in the text.

Code being edited repeats what the prompt holds (a function rewritten with a
renamed variable, a file typed out again), so the tokens that followed the
last few tokens' earlier occurrence are often what the model will write next.
The decode loop feeds such a draft beside the row's next token and keeps the
part the model agrees with (see `Batch`).

A decode step of a small model takes a millisecond or two, so drafting must
cost next to nothing: `Lookup` indexes the text's n-grams as tokens come and
drafts with a few dictionary look-ups, and it drafts fewer tokens while the
model keeps rejecting them (each drafted position makes the step longer).
"""
from __future__ import annotations

# Most drafts verified in one pass: the fused CPU step gives a pass of up to 16 positions (the
# row's next token and its drafts) each token's one-token logits bit for bit, so greedy output
# cannot change; a larger K drafts this many.
MAX_DRAFT_TOKENS = 15

# Longest n-gram matched. 3 tokens rarely match by chance in code; shorter tails are tried when
# it finds nothing, down to a single token, which still drafts well inside copied text.
MAX_NGRAM = 3


class Lookup:
    """One row's drafts: up to `max_tokens` tokens copied from what followed the latest earlier occurrence of its
    text's last n tokens, trying n = MAX_NGRAM down to 1, continued periodically past the text's end.

    `length` is how many to draft next: it starts at `max_tokens`, grows by 2 after a draft the
    model accepted whole and shrinks by 1 (not below 1) after one it cut short, so a row whose
    drafts keep failing feeds short ones and a row copying text feeds long ones.
    """

    def __init__(self, prompt: list[int], max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"a lookup drafts at least 1 token, got max_tokens={max_tokens}")
        self.max_tokens = max_tokens
        self.length = max_tokens
        self._prompt_length = len(prompt)
        self._text = list(prompt)
        # every n-gram ending before the last token -> where its latest occurrence's continuation starts
        self._after: dict[tuple[int, ...], int] = {}
        self._indexed = 0       # n-grams ending before this position are in `_after`

    def draft(self, generated: list[int], count: int) -> list[int]:
        """`count` tokens continuing the prompt followed by `generated` (the row's tokens so far:
        the previous call's and more); [] when its tail never occurred before."""
        text = self._text
        text += generated[len(text) - self._prompt_length:]
        if count < 1:
            return []
        # index the n-grams ending before the last token, so each has a continuation; a later
        # occurrence replaces an earlier one: nearest the cursor, it is most likely the text being rewritten
        after = self._after
        for end in range(self._indexed, len(text) - 1):
            for n in range(1, min(MAX_NGRAM, end + 1) + 1):
                after[tuple(text[end + 1 - n:end + 1])] = end + 1
        self._indexed = max(self._indexed, len(text) - 1)
        for n in range(min(MAX_NGRAM, len(text) - 1), 0, -1):
            start = after.get(tuple(text[-n:]))
            if start is not None:
                drafted = text[start:start + count]
                # a text repeating itself (a model looping) repeats on: past the end of the text,
                # the copy goes on from what it copied, one period (len(text) - start) back
                period = len(text) - start
                while len(drafted) < count:
                    drafted.append(drafted[-period])
                return drafted
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt `length` to how the model took the last draft (nothing when there was none)."""
        if drafted:
            self.length = min(self.max_tokens, self.length + 2) if accepted == drafted else max(1, self.length - 1)

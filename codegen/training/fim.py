"""Fill-in-the-middle documents, as in Bavarian et al. 2022, "Efficient Training
of Language Models to Fill in the Middle".

A document is cut at two character positions drawn uniformly at random into
prefix, middle and suffix, and rearranged so that the middle comes last; a model
trained on this learns to write a middle given what surrounds it. Each piece is
tokenized on its own, as in the paper, so no token spans a cut.
"""
from __future__ import annotations

import random

from ..tokenizer import FIM_TOKENS, FimSentinels


def add_fim_tokens(tokenizer) -> tuple[FimSentinels, list[str]]:
    """The sentinel ids, adding the sentinels the tokenizer lacks; also returns the added names."""
    missing = [name for name in FIM_TOKENS if name not in tokenizer.special_token_ids]
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer.fim_sentinels, missing


def validate_rates(fim_rate: float, fim_spm_rate: float) -> None:
    for name, value in (("fim_rate", fim_rate), ("fim_spm_rate", fim_spm_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} must be between 0 and 1, got {value}")


class FimTransform:
    """Encodes documents, rearranging a `rate` share of them for infilling.

    Of the rearranged ones, `spm_rate` use suffix-prefix-middle order
    (<pre><suf> suffix <mid> prefix middle), the rest prefix-suffix-middle
    (<pre> prefix <suf> suffix <mid> middle). The draws come from one generator
    seeded once, so the same documents in the same order give the same tokens.
    """

    def __init__(self, encode, sentinels: FimSentinels, rate: float, spm_rate: float, seed: int):
        validate_rates(rate, spm_rate)
        # empty pieces are common (a cut at either end) and have no tokens
        self.encode = lambda text: encode(text) if text else []
        self.sentinels = sentinels
        self.rate = rate
        self.spm_rate = spm_rate
        self.random = random.Random(seed)

    def __call__(self, text: str) -> list[int]:
        if self.random.random() >= self.rate:
            return self.encode(text)
        cut1, cut2 = sorted(self.random.randint(0, len(text)) for _ in range(2))
        prefix, middle, suffix = text[:cut1], text[cut1:cut2], text[cut2:]
        s = self.sentinels
        if self.random.random() < self.spm_rate:
            return [s.prefix, s.suffix, *self.encode(suffix), s.middle, *self.encode(prefix), *self.encode(middle)]
        return [s.prefix, *self.encode(prefix), s.suffix, *self.encode(suffix), s.middle, *self.encode(middle)]

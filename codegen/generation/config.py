"""What to generate and how: one dataclass shared by every caller."""
from __future__ import annotations

import math
from numbers import Integral, Real
from dataclasses import dataclass, field

DECODE_STRATEGIES = ("greedy_search", "sampling", "beam_search")


@dataclass
class GenerationConfig:
    """Decoding options; lengths count new tokens, never the prompt.

    `temperature` 0 with sampling means greedy. `top_k` 0 and `top_p` 1 disable
    those filters. `stop` strings end a sequence and are cut from its text.
    `logprobs` N reports the N most likely alternatives at each step.
    `early_stopping` (beam search) ends a prompt as soon as `num_beams`
    hypotheses are finished instead of when no running beam can beat them.
    `prompt_lookup_num_tokens` K > 0 (transformers' name; 0 is off) drafts up to
    K tokens per step by prompt lookup (fewer while the model rejects them; at most
    15, what one exact pass verifies) and verifies them in one forward pass:
    greedy output is unchanged, sampling still follows the model's distribution.
    """
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    decode_strategy: str = "greedy_search"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None
    early_stopping: bool = False
    prompt_lookup_num_tokens: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.decode_strategy == "greedy_search" or (
            self.decode_strategy == "sampling" and self.temperature == 0)

    def validate(self) -> "GenerationConfig":
        """Raise ValueError naming the first bad field; return self for chaining."""
        _integer(self, "max_new_tokens", minimum=1)
        _integer(self, "min_new_tokens", minimum=0)
        if self.decode_strategy not in DECODE_STRATEGIES:
            raise ValueError(f"decode_strategy must be one of {', '.join(DECODE_STRATEGIES)}, "
                             f"got {self.decode_strategy!r}")
        _number(self, "temperature")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        _integer(self, "top_k", minimum=0)
        _number(self, "top_p")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _integer(self, "num_beams", minimum=1)
        if self.num_beams > 1 and self.decode_strategy != "beam_search":
            raise ValueError(f"num_beams={self.num_beams} needs decode_strategy='beam_search', "
                             f"got {self.decode_strategy!r}")
        _number(self, "length_penalty")
        _number(self, "repetition_penalty")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        _integer(self, "num_return_sequences", minimum=1)
        if self.decode_strategy == "beam_search" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams}) for beam search")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.seed is not None:
            _integer(self, "seed", minimum=0)
        if self.logprobs is not None:
            _integer(self, "logprobs", minimum=0)
        _integer(self, "prompt_lookup_num_tokens", minimum=0)
        if self.prompt_lookup_num_tokens and self.decode_strategy == "beam_search":
            raise ValueError("prompt_lookup_num_tokens works with greedy_search and sampling, not beam_search")
        if not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping must be true or false, got {self.early_stopping!r}")
        return self


def _integer(config, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _number(config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")

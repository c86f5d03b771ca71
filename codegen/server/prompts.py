"""Turning a request's prompt (and suffix) into the token ids the model sees.

Editors send prompts up to the model's context and ask for hundreds of tokens,
so a prompt that does not fit loses its oldest tokens (and an infilling
suffix its farthest ones) instead of being refused.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreparedPrompt:
    ids: list[int]
    max_new_tokens: int    # the request's max_tokens, clamped to what the context leaves
    dropped: int           # prompt tokens cut to fit the context
    text: str              # the prompt as the model sees it, for `echo`


def prepare_prompt(predictor, prompt: str | list[int], suffix: str | None, max_tokens: int) -> PreparedPrompt:
    """Encode and fit one prompt; with a suffix and an infilling model, build a PSM prompt.

    `suffix` is ignored when the model has no fill-in-the-middle tokens.
    """
    tokenizer = predictor.tokenizer
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    fim = tokenizer.fim_sentinels
    if suffix is not None and fim is not None:
        return _prepare_infill(predictor, ids, tokenizer.encode(suffix), fim, max_tokens)
    if not ids:
        # as OpenAI does: an empty prompt generates from the start of a document
        ids = [tokenizer.eos_token_id]
    kept, max_new, truncated = predictor.fit(ids, max_tokens)
    text = prompt if isinstance(prompt, str) and not truncated else tokenizer.decode(kept)
    return PreparedPrompt(kept, max_new, len(ids) - len(kept), text)


def _prepare_infill(predictor, prefix: list[int], suffix: list[int], fim, max_tokens) -> PreparedPrompt:
    sentinels = (fim.prefix, fim.suffix, fim.middle)
    prefix_id, suffix_id, middle_id = sentinels
    whole = [prefix_id, *prefix, suffix_id, *suffix, middle_id]
    kept, max_new, truncated = predictor.fit(whole, max_tokens)
    if truncated:
        # the code next to the cursor matters most: cut the prefix's start and the
        # suffix's end, giving the suffix up to a quarter of the room
        room = len(kept) - len(sentinels)
        suffix_keep = min(len(suffix), max(room // 4, room - len(prefix)))
        prefix = prefix[len(prefix) - (room - suffix_keep):]
        suffix = suffix[:suffix_keep]
        kept = [prefix_id, *prefix, suffix_id, *suffix, middle_id]
    return PreparedPrompt(kept, max_new, len(whole) - len(kept), predictor.tokenizer.decode(kept))

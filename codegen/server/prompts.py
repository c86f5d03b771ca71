"""Turning a request's prompt (and suffix) into the token ids the model sees.

Editors send prompts up to the model's context and ask for hundreds of tokens,
so a prompt that does not fit loses its oldest tokens (and an infilling
suffix its farthest ones) instead of being refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from .protocol import bad_request


@dataclass(frozen=True)
class PreparedPrompt:
    ids: list[int]
    max_new_tokens: int    # the request's max_tokens, clamped to what the context leaves
    dropped: int           # prompt tokens cut to fit the context (estimated for text cut before tokenizing)
    text: str              # the prompt as the model sees it, for `echo`


def prepare_prompt(predictor, prompt: str | list[int], suffix: str | None, max_tokens: int,
                   what: str = "prompt") -> PreparedPrompt:
    """Encode and fit one prompt; with a suffix and an infilling model, build a PSM prompt.

    `suffix` is ignored when the model has no fill-in-the-middle tokens. A prompt (called `what` in
    errors) or suffix that holds ids outside the model's vocabulary gets a 400 naming it and the id.
    Text far longer than the context is cut before it is tokenized (`Predictor.prompt_ids`); `dropped`
    then counts the tokens cut that way as estimated.
    """
    tokenizer = predictor.tokenizer
    ids, cut = _checked(predictor, "prompt", prompt, what)
    fim = tokenizer.fim_sentinels
    if suffix is not None and fim is not None:
        suffix_ids, suffix_cut = _checked(predictor, "suffix", suffix, "suffix", keep_end=False)
        return _prepare_infill(predictor, ids, suffix_ids, fim, max_tokens, cut + suffix_cut)
    if not ids:
        # as OpenAI does: an empty prompt generates from the start of a document
        ids = [tokenizer.eos_token_id]
    kept, max_new, truncated = predictor.fit(ids, max_tokens)
    text = prompt if isinstance(prompt, str) and not (truncated or cut) else tokenizer.decode(kept)
    return PreparedPrompt(kept, max_new, cut + len(ids) - len(kept), text)


def _checked(predictor, param: str, prompt, what: str, keep_end: bool = True) -> tuple[list[int], int]:
    try:
        return predictor.prompt_ids(prompt, what, keep_end=keep_end)
    except ValueError as e:
        raise bad_request(param, str(e)) from None


def _prepare_infill(predictor, prefix: list[int], suffix: list[int], fim, max_tokens, cut: int) -> PreparedPrompt:
    sentinels = (fim.prefix, fim.suffix, fim.middle)
    _checked(predictor, "suffix", list(sentinels), "the tokenizer's fill-in-the-middle tokens (used with suffix)")
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
    return PreparedPrompt(kept, max_new, cut + len(whole) - len(kept), predictor.tokenizer.decode(kept))

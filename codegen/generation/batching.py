"""Shared by both decode loops: prompt checks, left-padded prefill, cache copies."""
from __future__ import annotations

from numbers import Integral

import numpy as np
import paddle

# Prefill runs in chunks of at most this many (rows x positions), which bounds the
# attention scores [rows, heads, chunk, total] a long prompt batch materialises.
PREFILL_POSITIONS = 1024


def check_prompt(model, prompt_ids, max_new_tokens: int, where: str) -> list[int]:
    """The prompt as a list of ints, or ValueError if it is empty, out of vocabulary or too long.

    Callers fit prompts to the context first (the predictor left-truncates and
    clamps max_new_tokens); here a prompt that does not fit is an error.
    """
    if not isinstance(prompt_ids, (list, tuple, np.ndarray)):
        raise ValueError(f"{where}: prompt_ids must be a list of token ids, got {type(prompt_ids).__name__}")
    ids = list(prompt_ids)
    if not ids:
        raise ValueError(f"{where}: prompt_ids is empty; generation needs at least one prompt token")
    vocab = model.config.vocab_size
    # plain ints in range, the common case, are checked at once: an editor's prompt has thousands
    plain = all(type(t) is int for t in ids) and 0 <= min(ids) and max(ids) < vocab
    for i, t in enumerate(() if plain else ids):
        if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < vocab:
            raise ValueError(f"{where}: prompt_ids[{i}] = {t!r} is not a token id in [0, {vocab})")
    context = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > context:
        raise ValueError(f"{where}: prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's max_position_embeddings of {context}; shorten the prompt or max_new_tokens")
    return [int(t) for t in ids]


def usable_vocab(model, tokenizer) -> int:
    """Ids below this have text. Checkpoints pad the embedding past the tokenizer
    (51200 vs 50295 for CodeGen); those ids are never generated."""
    return min(len(tokenizer), model.config.vocab_size)


def heal_prompt(tokenizer, prompt: list[int], usable: int) -> tuple[list[int], str, list[int] | None]:
    """(prompt to feed, healed text, allowed first tokens or None).

    A tokenizer that heals takes a trailing whitespace token off the prompt; the first
    generated token must then start with that text (see Tokenizer.heal).
    """
    if not hasattr(tokenizer, "heal"):
        return prompt, "", None
    prompt, healed = tokenizer.heal(prompt)
    if not healed:
        return prompt, "", None
    return prompt, healed, [t for t in tokenizer.ids_starting_with(healed) if t < usable]


def only_choices(logits: np.ndarray, choices: list[int]) -> None:
    """Leave only `choices` possible in each row of `logits` [rows, vocab], in place."""
    kept = logits[:, choices]
    logits[:] = -np.inf
    logits[:, choices] = kept


# Padded positions are masked out, so their id only has to be a valid embedding row;
# 0 is one for every model, while a tokenizer's pad id may lie past a small model's vocabulary.
PAD_ID = 0


def left_pad(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and 0/1 attention mask, both int64 [rows, longest]."""
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = prompt
        mask[row, longest - len(prompt):] = 1
    return ids, mask


def prefill(model, cache, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Feed `ids` [rows, n] after what `cache` holds; `mask` covers cache + ids.

    Returns the float32 logits [rows, vocab] of the last position.
    """
    rows, n = ids.shape
    chunk = max(1, PREFILL_POSITIONS // rows)
    past = cache.length
    with paddle.no_grad():
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            logits = model(paddle.to_tensor(ids[:, start:end]),
                           attention_mask=paddle.to_tensor(mask[:, :past + end]), cache=cache, last_only=True)
        return logits[:, -1].numpy()


def step(model, cache, tokens: list[int], mask: np.ndarray) -> np.ndarray:
    """One decode step: the last token of each row in, float32 logits [rows, vocab] out."""
    with paddle.no_grad():
        ids = paddle.to_tensor(np.asarray(tokens, dtype=np.int64)[:, None])
        logits = model(ids, attention_mask=paddle.to_tensor(mask), cache=cache, last_only=True)
        return logits[:, -1].numpy()


def step_tokens(model, cache, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A decode step feeding each row n tokens, ids [rows, n] (n > 1 verifies drafts):
    float32 logits [rows, n, vocab] after each of them."""
    with paddle.no_grad():
        logits = model(paddle.to_tensor(tokens), attention_mask=paddle.to_tensor(mask), cache=cache,
                       last_only=tokens.shape[1] == 1)
        return logits.numpy()


def copy_positions(model, cache, start: int, end: int, max_length: int):
    """A new cache with room for `max_length` positions holding `cache`'s positions [start, end)."""
    copy = model.new_cache(cache.batch_size, max_length=max_length)
    for layer, (keys, values) in enumerate(zip(cache.keys, cache.values)):
        copy.update(layer, keys[:, :, start:end], values[:, :, start:end])
    copy.advance(end - start)
    return copy


def select_rows(cache, rows: list[int]) -> None:
    cache.reorder(paddle.to_tensor(np.asarray(rows, dtype=np.int64)))

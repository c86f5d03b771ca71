"""The prompt cache: reused prefixes give the same tokens and logprobs as a fresh prefill."""
import numpy as np
import pytest
from conftest import ByteTokenizer, Recording, collect, tiny_model

from codegen.generation import GenerationConfig, PromptCache, Request, generate, stream
from codegen.generation.prompt_cache import _common_prefix


CONFIG = GenerationConfig(max_new_tokens=6, logprobs=2)
PROMPT = np.random.default_rng(3).integers(0, 1000, 30).tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def cached_run(spy, cache, prompt, config=CONFIG):
    spy.shapes.clear()
    return collect(stream(spy, ByteTokenizer(), [Request(prompt, config)], prompt_cache=cache))[0]


def fresh(model, prompt, config=CONFIG):
    return generate(model, ByteTokenizer(), [prompt], config)[0][0]


def same_output(row, seq):
    assert row["token_ids"] == seq.token_ids
    assert np.abs(np.array(row["logprobs"]) - seq.token_logprobs).max() <= 1e-4


def test_an_edited_prompt_prefills_only_after_the_shared_prefix(model):
    spy, cache = Recording(model), PromptCache(max_entries=2)
    same_output(cached_run(spy, cache, PROMPT), fresh(model, PROMPT))
    assert spy.shapes[0] == (1, 30) and len(cache) == 1

    edited = PROMPT[:25] + [7, 8, 9]                 # a keystroke changed the end
    same_output(cached_run(spy, cache, edited), fresh(model, edited))
    assert spy.shapes[0] == (1, 3)


def test_a_repeated_prompt_reruns_its_last_token(model):
    spy, cache = Recording(model), PromptCache()
    cached_run(spy, cache, PROMPT)
    same_output(cached_run(spy, cache, PROMPT), fresh(model, PROMPT))
    assert spy.shapes[0] == (1, 1)


def test_a_prompt_extending_an_earlier_generation_reuses_it(model):
    spy, cache = Recording(model), PromptCache()
    first = cached_run(spy, cache, PROMPT)
    accepted = PROMPT + first["token_ids"][:5] + [11]   # the editor accepted 5 tokens and typed on
    same_output(cached_run(spy, cache, accepted, GenerationConfig(max_new_tokens=4)),
                fresh(model, accepted, GenerationConfig(max_new_tokens=4)))
    assert spy.shapes[0] == (1, 1)
    assert len(cache) == 1                          # the extended entry replaced the one it extends


def test_entries_are_bounded_and_least_recently_used_go_first(model):
    spy, cache = Recording(model), PromptCache(max_entries=2)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    for prompt in prompts:
        cached_run(spy, cache, prompt, GenerationConfig(max_new_tokens=2))
    assert len(cache) == 2
    cached_run(spy, cache, prompts[0], GenerationConfig(max_new_tokens=2))
    assert spy.shapes[0] == (1, 4)                  # the oldest entry was evicted


def test_batches_and_cancelled_rows_leave_the_cache_consistent(model):
    spy, cache = Recording(model), PromptCache()
    collect(stream(spy, ByteTokenizer(), [Request(PROMPT, CONFIG), Request(PROMPT[:10], CONFIG)], prompt_cache=cache))
    assert len(cache) == 2                          # each single-row request leaves its cache
    collect(stream(spy, ByteTokenizer(), [Request([1, 2, 3], GenerationConfig(max_new_tokens=2,
                                                                              num_return_sequences=2))],
                   prompt_cache=cache))
    assert len(cache) == 2                          # rows of a request with n > 1 do not

    run = stream(spy, ByteTokenizer(), [Request(PROMPT, CONFIG)], prompt_cache=cache)
    next(run)
    run.cancel(0)
    assert list(run) == []
    same_output(cached_run(spy, cache, PROMPT), fresh(model, PROMPT))
    assert spy.shapes[0] == (1, 1)


def test_max_entries_must_be_positive():
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(0)


def test_bytes_are_bounded_too(model):
    spy = Recording(model)
    one_entry = PromptCache()
    cached_run(spy, one_entry, [1, 2, 3, 4], GenerationConfig(max_new_tokens=2))
    cache = PromptCache(max_entries=10, max_bytes=2 * one_entry.bytes)
    for prompt in ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]):
        cached_run(spy, cache, prompt, GenerationConfig(max_new_tokens=2))
    assert len(cache) == 2 and cache.bytes == 2 * one_entry.bytes
    cached_run(spy, cache, [1, 2, 3, 4], GenerationConfig(max_new_tokens=2))
    assert spy.shapes[0] == (1, 4)                  # the oldest entry was evicted


def test_a_request_replaces_the_entry_it_continued_but_not_one_it_shares_a_header_with(model):
    spy, cache = Recording(model), PromptCache()
    config = GenerationConfig(max_new_tokens=3)
    cached_run(spy, cache, PROMPT, config)
    cached_run(spy, cache, PROMPT + [5, 6], config)       # the editor typed on: one entry, the newer
    assert len(cache) == 1
    cached_run(spy, cache, PROMPT[:5] + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], config)
    assert len(cache) == 2                                # a shared header leaves the other editor's entry


def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes"):
        PromptCache(4, max_bytes=0)


@pytest.mark.parametrize("differ_at", [0, 1, 63, 64, 65, 191, 192, 193, 447, 448, 999, None])
def test_the_shared_prefix_is_found_wherever_the_prompts_part(differ_at):
    entry = np.arange(1000)
    prompt = entry.copy()
    if differ_at is not None:
        prompt[differ_at] = -1
    expected = next((i for i in range(1000) if entry[i] != prompt[i]), 1000)
    assert _common_prefix(entry, prompt) == _common_prefix(prompt, entry) == expected
    assert _common_prefix(entry[:500], prompt) == min(expected, 500)

"""The joinable batch: requests join a running batch, prefill in chunks beside it, and get their solo output."""
import numpy as np
import pytest
from conftest import VOCAB, ByteTokenizer, Recording, collect, copy_model, small_model, tiny_model

from codegen.generation import Batch, GenerationConfig, generate
from codegen.inference.fast import make_fast


RNG = np.random.default_rng(5)
SHORT = RNG.integers(0, VOCAB, 7).tolist()
LONG = RNG.integers(0, VOCAB, 90).tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def solo(model, prompt, config):
    return generate(model, ByteTokenizer(), [prompt], config)[0][0]


def run_until_empty(batch, events):
    while batch:
        events += batch.step()
    return collect(events)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_requests_joining_mid_batch_get_their_solo_greedy_tokens(fast):
    model = make_fast(copy_model(small_model(vocab_size=VOCAB, n_positions=128)), "fp32") if fast else tiny_model()
    config = GenerationConfig(max_new_tokens=12, logprobs=2)
    batch = Batch(model, ByteTokenizer(), prefill_chunk=32)
    (first,) = batch.add(SHORT, config)
    events = []
    for _ in range(4):
        events += batch.step()
    # the first row is decoding; a longer prompt joins (older rows shift right), then a shorter one
    assert batch.decoding == 1 and len(first.tokens) == 4
    (second,) = batch.add(LONG, config)
    for _ in range(3):
        events += batch.step()
    (third,) = batch.add(SHORT[:3], GenerationConfig(max_new_tokens=5))
    assert len(first.tokens) == 7 and second.tokens      # the first kept decoding while the second prefilled
    rows = run_until_empty(batch, events)
    for row, prompt, row_config in ((first, SHORT, config), (second, LONG, config),
                                    (third, SHORT[:3], GenerationConfig(max_new_tokens=5))):
        alone = solo(model, prompt, row_config)
        assert rows[row.index]["token_ids"] == alone.token_ids
        assert np.abs(np.array(rows[row.index]["logprobs"]) - alone.token_logprobs).max() <= 1e-4


def test_a_long_prefill_does_not_stall_a_running_stream(model):
    spy = Recording(model)
    batch = Batch(spy, ByteTokenizer(), prefill_chunk=16)
    (running,) = batch.add(SHORT, GenerationConfig(max_new_tokens=30))
    batch.step()
    spy.shapes.clear()
    (joining,) = batch.add(LONG, GenerationConfig(max_new_tokens=3))
    tokens = []
    while not joining.tokens:
        batch.step()
        tokens.append(len(running.tokens))
    # 90 prompt tokens in chunks of 16: six steps, each also decoding the running row
    assert tokens == list(range(2, 8))
    assert spy.shapes == [(1, 1), (1, 16)] * 5 + [(1, 1), (1, 10)]


def test_a_request_that_would_outgrow_the_context_waits_for_room(model):
    long_generation = GenerationConfig(max_new_tokens=100)       # 5 + 100 fits 128 ...
    batch = Batch(model, ByteTokenizer())
    (first,) = batch.add(SHORT[:5], long_generation)
    events = batch.step() + batch.step()
    (second,) = batch.add(LONG, GenerationConfig(max_new_tokens=30))   # ... but not beside 90 + 30
    events += batch.step()
    assert second.tokens and batch.decoding == 1                 # prefilled, not joined yet
    rows = run_until_empty(batch, events)
    assert rows[first.index]["token_ids"] == solo(model, SHORT[:5], long_generation).token_ids
    assert rows[second.index]["token_ids"] == solo(model, LONG, GenerationConfig(max_new_tokens=30)).token_ids


def test_ended_rows_finish_with_length_and_cancelled_rows_say_nothing_more(model):
    batch = Batch(model, ByteTokenizer(), prefill_chunk=8)
    config = GenerationConfig(max_new_tokens=50)
    (ended,) = batch.add(SHORT, config)
    (cancelled,) = batch.add(SHORT[:4], config)
    (waiting,) = batch.add(LONG, GenerationConfig(max_new_tokens=30))
    events = batch.step() + batch.step()
    batch.end(ended.index)
    batch.end(waiting.index)                    # still prefilling: ends with nothing
    batch.cancel(cancelled.index)
    after = batch.step()
    assert not batch
    rows = collect(events + after)
    assert rows[ended.index]["finishes"] == ["length"] and 0 < len(rows[ended.index]["token_ids"]) < 50
    assert rows[waiting.index]["finishes"] == ["length"] and rows[waiting.index]["token_ids"] == []
    assert all(e.index != cancelled.index for e in after)


def test_rows_keep_their_tokens_when_the_cache_grows_for_more_rows(model):
    # the second request needs a second slot; the timeline stays where it is (its prompt is shorter)
    config = GenerationConfig(max_new_tokens=10, logprobs=1)
    batch = Batch(model, ByteTokenizer())
    (first,) = batch.add(LONG[:40], config)
    events = batch.step() + batch.step()
    (second,) = batch.add(SHORT, config)
    rows = run_until_empty(batch, events)
    for row, prompt in ((first, LONG[:40]), (second, SHORT)):
        assert rows[row.index]["token_ids"] == solo(model, prompt, config).token_ids


def test_a_batch_reuses_its_cache_for_the_next_rows(model):
    batch, config = Batch(model, ByteTokenizer()), GenerationConfig(max_new_tokens=4)
    caches = []
    for prompt in (LONG[:40], SHORT, LONG[:30]):
        (row,) = batch.add(prompt, config)
        events = batch.step() + batch.step()
        caches.append(batch._cache)
        run_until_empty(batch, events)
        assert row.tokens == solo(model, prompt, config).token_ids
    assert caches[0] is caches[1] is caches[2]

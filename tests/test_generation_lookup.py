"""Prompt-lookup decoding: drafts copied from the text, verified in one forward pass inside the one Batch loop.

Greedy rows must give exactly plain greedy's tokens (and logprobs); sampling rows must still follow the
model's distribution; stops, EOS, max_new_tokens and the stream must hold when several tokens come at once.
"""
import subprocess
import sys
from dataclasses import replace

import httpx
import numpy as np
import paddle
import pytest
from conftest import (CYCLE, CYCLE_PROMPT, LOOKUP_PROMPTS, VOCAB, ByteTokenizer, ScriptedModel, collect, copy_model,
                      needs_kernels, plain, run, running_server, small_model, tiny_model)
from scipy.stats import chisquare

from codegen import Taskflow
from codegen.generation import Batch, GenerationConfig, PromptCache, generate
from codegen.generation.lookup import MAX_NGRAM, Lookup
from codegen.generation.processors import sample_given_draft, sample_token
from codegen.inference.fast import make_fast
from codegen.predictor import Predictor
from codegen.server.settings import Settings


# An editor's request to rewrite code it holds. The shipped model is too small to copy it back; the
# drafts it accepts come from its own repetitions, which lookup finds in the text generated so far
EDITING_PROMPT = '''def moving_average(values, window):
    """Return the averages of each run of `window` consecutive values."""
    averages = []
    total = sum(values[:window])
    averages.append(total / window)
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages


# The same function with `values` renamed to `samples`:
def moving_average(samples, window):
    """Return the averages of each run of `window` consecutive samples."""
'''


# -- drafting ---------------------------------------------------------------------------

def reference_draft(history: list[int], count: int) -> list[int]:
    """The definition, searched afresh: up to `count` tokens after the latest earlier occurrence
    of history's last n tokens, n = MAX_NGRAM down to 1, copied on from the draft past the end."""
    for n in range(min(MAX_NGRAM, len(history) - 1), 0, -1):
        for start in range(len(history) - 1 - n, -1, -1):
            if history[start:start + n] == history[-n:]:
                text = list(history)
                for i in range(count):
                    text.append(text[start + n + i])    # beyond the history: what it drafted
                return text[len(history):]
    return []


def draft(history, count):
    return Lookup(list(history[:1]), 8).draft(list(history[1:]), count)


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_matching_tail():
    history = [1, 2, 3, 9, 9, 5, 2, 3, 4, 4, 8, 1, 2, 3]
    # [1 2 3] occurred once before, followed by 9 9 5 ...; [2 3] also after 6, which the 3-gram outranks
    assert draft(history, 3) == [9, 9, 5]
    # past the end of the history the copy goes on one period back, as a loop would
    assert draft(history, 20) == history[3:] + history[3:12]
    # [0 2 3] never occurred before; of [2 3]'s earlier occurrences the latest wins
    assert draft([5, 2, 3, 6, 2, 3, 7, 0, 2, 3], 2) == [7, 0]
    # only the last token recurs
    assert draft([4, 8, 6, 1, 8], 5) == [6, 1, 8, 6, 1]
    assert draft([7, 7], 3) == [7, 7, 7]


def test_no_draft_without_an_earlier_occurrence_or_room():
    assert draft([1, 2, 3, 4], 4) == []
    assert draft([5], 4) == []
    assert draft([1, 2, 1], 0) == []


@pytest.mark.parametrize("vocab", [3, 8, 40])
def test_drafts_kept_up_to_date_as_tokens_come_equal_a_fresh_search_of_the_whole_text(vocab):
    rng = np.random.default_rng(vocab)
    for _ in range(20):
        prompt = rng.integers(0, vocab, int(rng.integers(1, 30))).tolist()
        lookup, generated = Lookup(prompt, 8), []
        while len(generated) < 60:
            # tokens come one or several at a time (accepted drafts), and some steps draft nothing
            generated += rng.integers(0, vocab, int(rng.integers(1, 4))).tolist()
            count = int(rng.integers(0, 10))
            assert lookup.draft(generated, count) == reference_draft(prompt + generated, count)


def test_the_draft_length_adapts_to_acceptance_within_the_requested_k():
    lookup = Lookup([1, 2, 3], 5)
    assert lookup.length == 5
    lengths = []
    for drafted, accepted in [(5, 0), (4, 1), (3, 3), (5, 2), (4, 0), (3, 0), (2, 0), (1, 0), (1, 1), (3, 3),
                              (5, 5), (5, 5), (0, 0)]:
        lookup.record(drafted, accepted)
        lengths.append(lookup.length)
    # cut short: one less, never below 1; taken whole: two more, never above K; no draft: unchanged
    assert lengths == [4, 3, 5, 4, 3, 2, 1, 1, 3, 5, 5, 5, 5]
    with pytest.raises(ValueError, match="max_tokens"):
        Lookup([1], 0)


# -- greedy: identical to plain greedy --------------------------------------------------------

@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=needs_kernels)], ids=["plain", "fused"])
def test_greedy_tokens_and_logprobs_equal_plain_greedy_while_drafts_are_accepted(fast):
    model = make_fast(copy_model(small_model(vocab_size=VOCAB, n_positions=128)), "fp32") if fast else tiny_model()
    config = GenerationConfig(max_new_tokens=40, logprobs=2, prompt_lookup_num_tokens=8)
    steps = tokens = accepted = 0
    for prompt in LOOKUP_PROMPTS:
        alone = plain(model, prompt, config)
        sequence, _, batch = run(model, prompt, config)
        assert sequence.token_ids == alone.token_ids
        assert sequence.finish_reason == alone.finish_reason
        assert np.abs(np.array(sequence.token_logprobs) - alone.token_logprobs).max() <= 1e-4
        assert [list(t) for t in sequence.top_logprobs] == [list(t) for t in alone.top_logprobs]
        steps, tokens, accepted = steps + batch.decode_steps, tokens + len(alone.token_ids), accepted + batch.accepted
    # random models repeat themselves, and the drafts catch it: fewer forward passes than tokens
    assert accepted >= 10 and steps + accepted == tokens - len(LOOKUP_PROMPTS)


@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=needs_kernels)], ids=["plain", "fused"])
def test_rows_with_different_k_sharing_steps_and_joining_mid_batch_get_their_solo_tokens(fast):
    model = make_fast(copy_model(small_model(vocab_size=VOCAB, n_positions=128)), "fp32") if fast else tiny_model()
    batch = Batch(model, ByteTokenizer(), prefill_chunk=16)
    configs = [GenerationConfig(max_new_tokens=n, logprobs=1, prompt_lookup_num_tokens=k)
               for n, k in ((30, 0), (25, 8), (35, 3), (20, 5))]
    rows, events = [], []
    for prompt, config in zip(LOOKUP_PROMPTS, configs):
        rows += batch.add(prompt, config)
        events += batch.step() + batch.step()
    while batch:
        events += batch.step()
    got = collect(events)
    for row, prompt, config in zip(rows, LOOKUP_PROMPTS, configs):
        alone = plain(model, prompt, config)
        assert got[row.index]["token_ids"] == alone.token_ids
        assert np.abs(np.array(got[row.index]["logprobs"]) - alone.token_logprobs).max() <= 1e-4
    assert batch.accepted > 0


def test_a_row_stored_in_the_prompt_cache_after_lookup_holds_the_keys_of_its_own_tokens():
    """Rejected drafts must not survive in what the prompt cache keeps: the next prompt that continues
    this one starts from it and must still get plain greedy's tokens."""
    model = tiny_model()
    config = GenerationConfig(max_new_tokens=30, prompt_lookup_num_tokens=8)
    cache = PromptCache(4)
    sequence, _, batch = run(model, LOOKUP_PROMPTS[1], config, prompt_cache=cache)
    assert batch.drafted > batch.accepted > 0       # it rejected some drafts, whose positions it wrote
    follow_up = LOOKUP_PROMPTS[1] + sequence.token_ids + [3, 1, 4]
    again, _, _ = run(model, follow_up, config, prompt_cache=cache)
    assert cache.hits == 1 and cache.reused_tokens > len(LOOKUP_PROMPTS[1])
    assert again.token_ids == plain(model, follow_up, config).token_ids


# -- several tokens at once: stops, EOS, length, the stream ------------------------------------

# a -> b -> c -> d -> a: once the prompt holds the cycle, every draft is right
def test_a_stop_string_inside_an_accepted_run_cuts_there():
    model = ScriptedModel(CYCLE, vocab=128)
    config = GenerationConfig(max_new_tokens=40, stop=["cdab"], prompt_lookup_num_tokens=8)
    sequence, events, batch = run(model, CYCLE_PROMPT, config)
    assert sequence.text == "dab" and sequence.finish_reason == "stop"
    assert sequence.token_ids == plain(model, CYCLE_PROMPT, config).token_ids
    # the stop came in the first step's run of accepted tokens ("abcdabcd", the prompt's cycle
    # continued), not one token at a time
    assert batch.decode_steps == 1 and batch.accepted >= 4
    assert "".join(e.text for e in events) == "dab"


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 9, 10, 17])
def test_max_new_tokens_is_never_exceeded_however_many_drafts_are_right(max_new_tokens):
    model = ScriptedModel(CYCLE, vocab=128)
    config = GenerationConfig(max_new_tokens=max_new_tokens, logprobs=0, prompt_lookup_num_tokens=8)
    sequence, events, batch = run(model, CYCLE_PROMPT, config)
    assert len(sequence.token_ids) == max_new_tokens and sequence.finish_reason == "length"
    assert sequence.text == ("dabc" * 5)[:max_new_tokens]
    assert sum(len(e.token_ids) for e in events) == max_new_tokens
    assert batch.decode_steps < max_new_tokens - 1 or max_new_tokens <= 2


class WidthRecorder(ScriptedModel):
    """A ScriptedModel noting how many positions each forward pass fed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.widths = []

    def __call__(self, input_ids, *args, **kwargs):
        self.widths.append(input_ids.shape[1])
        return super().__call__(input_ids, *args, **kwargs)


def test_a_row_drafts_fewer_tokens_while_they_are_rejected_and_k_again_once_they_are_accepted():
    model = WidthRecorder(CYCLE, vocab=128)
    prompt = list(b"axbxcxdxa")     # every letter followed by x: the first drafts are all wrong
    config = GenerationConfig(max_new_tokens=30, prompt_lookup_num_tokens=6)
    sequence, _, batch = run(model, prompt, config)
    assert sequence.token_ids == plain(ScriptedModel(CYCLE, vocab=128), prompt, config).token_ids
    # the prefill (9), then 1 + 6, 5, 4, 3 drafts, each rejected at once; "bcd" after the prompt's
    # last "a" is right, so 5 next (all right, as the cycle now is), then K = 6 until max_new_tokens
    assert model.widths == [9, 7, 6, 5, 4, 6, 7, 7, 2]
    assert batch.accepted == 3 + 5 + 6 + 6 + 1


def test_a_k_above_what_one_exact_pass_verifies_drafts_at_most_that_many():
    model = WidthRecorder(CYCLE, vocab=128, n_positions=128)
    config = GenerationConfig(max_new_tokens=60, prompt_lookup_num_tokens=40)
    sequence, _, _ = run(model, CYCLE_PROMPT, config)
    expected = plain(ScriptedModel(CYCLE, vocab=128, n_positions=128), CYCLE_PROMPT, config)
    assert sequence.token_ids == expected.token_ids
    # the prefill, then the row's next token and 15 drafts a pass (all right: the model cycles)
    assert model.widths[1:4] == [16, 16, 16] and max(model.widths[1:]) == 16


def test_eos_where_a_draft_was_expected_ends_the_row_as_plain_decoding_does():
    eos = ord("!")
    model = ScriptedModel({**CYCLE, ord("d"): eos}, vocab=128)
    prompt = list(b"abcdabcdab")     # drafts say "cdabcd..." after "ab"; the model ends after "cd"
    config = GenerationConfig(max_new_tokens=20, prompt_lookup_num_tokens=8)
    tokenizer = ByteTokenizer(eos_token_id=eos)
    sequence, _, batch = run(model, prompt, config, tokenizer)
    assert sequence.text == "cd" and sequence.finish_reason == "stop"
    assert sequence.token_ids == plain(model, prompt, config, tokenizer).token_ids
    assert batch.decode_steps == 1


def test_streamed_deltas_of_accepted_runs_add_up_to_the_sequence_with_its_logprobs():
    model = tiny_model()
    config = GenerationConfig(max_new_tokens=40, logprobs=3, prompt_lookup_num_tokens=6)
    for prompt in LOOKUP_PROMPTS[1:3]:
        sequence, events, batch = run(model, prompt, config)
        assert any(len(e.token_ids) > 1 for e in events)      # some deltas carry an accepted run
        (row,) = collect(events).values()
        assert row["text"] == sequence.text and row["token_ids"] == sequence.token_ids
        assert row["logprobs"] == sequence.token_logprobs and row["finishes"] == ["length"]
        assert row["after_finish"] == 0
        reference = plain(model, prompt, config)
        assert np.abs(np.array(row["logprobs"]) - reference.token_logprobs).max() <= 1e-4


# -- sampling: the model's distribution, drafts or not ---------------------------------------------

def test_sampling_given_a_draft_draws_from_the_same_distribution_as_without():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=12).astype(np.float32) * 2
    draws = 20000
    for guess in (int(np.argmax(scores)), int(np.argmin(scores)), 3):
        options = dict(temperature=0.8, top_k=6, top_p=0.95)
        plain_draws = np.bincount([sample_token(scores, rng=rng, **options) for _ in range(draws)], minlength=12)
        expected = plain_draws / draws
        kept = expected > 0
        drafted = np.bincount([sample_given_draft(scores, guess, rng=rng, **options) for _ in range(draws)],
                              minlength=12)
        assert drafted[~kept].sum() == 0    # nothing outside top-k and the nucleus
        # with the exact probabilities computed by hand: softmax of the top-k, then the nucleus
        assert chisquare(drafted[kept], plain_draws[kept] * drafted[kept].sum() / plain_draws[kept].sum()).pvalue > 1e-3


def test_sampling_rows_with_lookup_follow_the_models_distribution_end_to_end():
    """Over a 16-token vocabulary every token occurs in the prompt, so the second token is always
    drafted: its pairs with the first must follow p(t1) p(t2 | t1) computed from full forwards."""
    vocab, top_k, temperature = 16, 4, 0.7
    model = tiny_model(seed=3, vocab=vocab)
    tokenizer = ByteTokenizer(vocab=vocab)
    prompt = list(range(vocab)) + [5, 9, 2]
    config = GenerationConfig(max_new_tokens=3, decode_strategy="sampling", temperature=temperature, top_k=top_k,
                              num_return_sequences=500, prompt_lookup_num_tokens=4)
    batch = Batch(model, tokenizer)
    rows = []
    for seed in range(8):
        rows += batch.add(prompt, replace(config, seed=seed))
    while batch:
        batch.step()
    assert batch.drafted == len(rows) and 0 < batch.accepted < batch.drafted

    def probabilities(ids):
        with paddle.no_grad():
            logits = model(paddle.to_tensor(np.array([ids]))).numpy()[0, -1].astype(np.float64) / temperature
        best = np.argsort(-logits)[:top_k]
        p = np.zeros(vocab)
        p[best] = np.exp(logits[best] - logits[best].max())
        return p / p.sum()

    first = probabilities(prompt)
    expected = np.concatenate([first[a] * probabilities(prompt + [a]) for a in range(vocab)])
    observed = np.bincount([row.tokens[0] * vocab + row.tokens[1] for row in rows], minlength=vocab * vocab)
    assert observed[expected == 0].sum() == 0
    assert chisquare(observed[expected > 0], expected[expected > 0] * len(rows)).pvalue > 1e-3


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, field", [
    (dict(prompt_lookup_num_tokens=-1), "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=2.5), "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=4, decode_strategy="beam_search", num_beams=2), "prompt_lookup_num_tokens"),
])
def test_bad_prompt_lookup_options_are_named(options, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**options).validate()


@pytest.fixture(scope="module")
def shipped():
    return Predictor(prompt_cache_entries=0)


def test_the_shipped_model_on_an_editing_prompt_needs_fewer_steps_for_the_same_text(shipped):
    ids = shipped.tokenizer.encode(EDITING_PROMPT)
    config = GenerationConfig(max_new_tokens=96)
    alone = generate(shipped.model, shipped.tokenizer, [ids], config)[0][0]
    sequence, _, batch = run(shipped.model, ids, replace(config, prompt_lookup_num_tokens=8), shipped.tokenizer)
    assert sequence.token_ids == alone.token_ids and len(alone.token_ids) == 96
    # each step made one token and took its accepted drafts; the first token came from the prefill
    assert batch.decode_steps + batch.accepted == 95 and batch.accepted >= 20


def test_taskflow_and_cli_take_prompt_lookup_and_keep_greedy_output(tiny_model_dir):
    options = dict(model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=24)
    prompts = ["def add(a, b):\n    return a + b\n\ndef add(", "x = [1, 2, 3, 1, 2, 3, 1, 2"]
    assert Taskflow("code_generation", prompt_lookup_num_tokens=5, **options)(prompts) == \
        Taskflow("code_generation", **options)(prompts)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        Taskflow("code_generation", prompt_lookup_num_tokens=-2, **options)

    def cli(*flags):
        result = subprocess.run([sys.executable, "-m", "codegen.cli", "generate", prompts[0], "--model",
                                 str(tiny_model_dir), "--max-length", "24", *flags], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert cli("--prompt-lookup", "5") == cli()


def test_server_flag_request_field_and_metrics_of_speculative_tokens():
    """`--prompt-lookup` sets the default, a request may choose its own, and /metrics counts drafts."""
    settings = Settings(prompt_lookup=8, prompt_cache_entries=0)
    body = {"prompt": EDITING_PROMPT, "max_tokens": 64, "temperature": 0}
    with running_server(settings) as (base, _), httpx.Client(timeout=120) as http:
        with_lookup = http.post(base + "/v1/completions", json=body).json()["choices"][0]["text"]
        metrics = http.get(base + "/metrics").text
        without = http.post(base + "/v1/completions", json={**body, "prompt_lookup_num_tokens": 0})
        bad = http.post(base + "/v1/completions", json={**body, "prompt_lookup_num_tokens": 99})
        after = http.get(base + "/metrics").text
    assert without.json()["choices"][0]["text"] == with_lookup
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_lookup_num_tokens"

    def counter(text, name):
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))

    drafted, accepted = (counter(metrics, f"codegen_speculative_{what}_tokens_total") for what in ("draft", "accepted"))
    assert drafted >= accepted >= 10
    # the request without lookup drafted nothing
    assert counter(after, "codegen_speculative_draft_tokens_total") == drafted

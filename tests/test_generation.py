"""The greedy/sampling decode loop on a tiny random CodeGen: cache, batching, streaming, options."""
from dataclasses import replace

import numpy as np
import paddle
import pytest
from conftest import TOKEN_PROMPTS, VOCAB, ByteTokenizer, Recording, collect, full_logprobs, tiny_model

from codegen.generation import GenerationConfig, Request, generate, stream
from codegen.generation.processors import apply_repetition_penalty, sample_token, top_alternatives


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_cached_steps_match_a_full_forward_for_padded_rows(model):
    config = GenerationConfig(max_new_tokens=12, logprobs=3)
    results = generate(model, ByteTokenizer(), TOKEN_PROMPTS[:2], config)
    for prompt, (seq,) in zip(TOKEN_PROMPTS[:2], results):
        assert len(seq.token_ids) == 12 and seq.finish_reason == "length"
        reference = full_logprobs(model, prompt + seq.token_ids)[len(prompt) - 1:-1]
        chosen = reference[np.arange(12), seq.token_ids]
        assert np.abs(np.array(seq.token_logprobs) - chosen).max() <= 1e-4
        assert seq.token_ids == reference.argmax(-1).tolist()
        for step, top in enumerate(seq.top_logprobs):
            best = np.sort(reference[step])[::-1][:3]
            assert np.abs(np.array(sorted(top.values(), reverse=True)) - best).max() <= 1e-4
        assert seq.score == pytest.approx(sum(seq.token_logprobs), abs=1e-4)


def test_rows_without_alternatives_report_the_raw_logprob_of_their_tokens(model):
    # eos is the first greedy token: min_new_tokens bans it, yet the reported log-probabilities
    # stay those of the raw model (eos included), as they are when a row asks for alternatives
    eos = generate(model, ByteTokenizer(), [TOKEN_PROMPTS[2]], GenerationConfig(max_new_tokens=1))[0][0].token_ids[0]
    tok = ByteTokenizer(eos_token_id=eos)
    configs = [GenerationConfig(max_new_tokens=8),
               GenerationConfig(max_new_tokens=8, decode_strategy="sampling", temperature=0.7, seed=4),
               GenerationConfig(max_new_tokens=8, min_new_tokens=3),
               GenerationConfig(max_new_tokens=8, min_new_tokens=3, logprobs=2)]
    prompts = [TOKEN_PROMPTS[0], TOKEN_PROMPTS[1], TOKEN_PROMPTS[2], TOKEN_PROMPTS[2]]
    run = stream(model, tok, [Request(p, c) for p, c in zip(prompts, configs)])
    for _ in run:
        pass
    sequences = [row.sequence() for row in run.rows]
    for prompt, config, seq in zip(prompts, configs, sequences):
        reference = full_logprobs(model, prompt + seq.token_ids)[len(prompt) - 1:-1]
        chosen = reference[np.arange(len(seq.token_ids)), seq.token_ids]
        assert np.abs(np.array(seq.token_logprobs) - chosen).max() <= 1e-4
        if config.is_greedy and not config.min_new_tokens:
            assert seq.token_ids == reference.argmax(-1).tolist()
        for step, top in enumerate(seq.top_logprobs or []):   # ids with the same text share a key
            assert max(top.values()) == pytest.approx(reference[step].max(), abs=1e-4)
    assert sequences[2].token_ids[0] != eos
    assert sequences[2].token_logprobs == sequences[3].token_logprobs
    assert sequences[2].top_logprobs is None and len(sequences[3].top_logprobs) == len(sequences[3].token_ids)


def test_batched_greedy_gives_each_prompt_its_own_tokens(model):
    tok = ByteTokenizer()
    config = GenerationConfig(max_new_tokens=10)
    together = generate(model, tok, TOKEN_PROMPTS, config)
    for prompt, seqs in zip(TOKEN_PROMPTS, together):
        assert seqs[0].token_ids == generate(model, tok, [prompt], config)[0][0].token_ids


def test_rows_with_different_configs_share_a_batch(model):
    tok = ByteTokenizer()
    greedy = GenerationConfig(max_new_tokens=6)
    sampled = GenerationConfig(max_new_tokens=9, decode_strategy="sampling", temperature=0.8, top_k=20, seed=3)
    rows = collect(stream(model, tok, [Request(TOKEN_PROMPTS[0], greedy), Request(TOKEN_PROMPTS[1], sampled)]))
    assert rows[0]["token_ids"] == generate(model, tok, [TOKEN_PROMPTS[0]], greedy)[0][0].token_ids
    assert rows[1]["token_ids"] == generate(model, tok, [TOKEN_PROMPTS[1]], sampled)[0][0].token_ids
    assert [len(rows[0]["token_ids"]), len(rows[1]["token_ids"])] == [6, 9]


@pytest.mark.parametrize("config", [
    GenerationConfig(max_new_tokens=15, logprobs=2),
    GenerationConfig(max_new_tokens=15, stop=["<5", "9>"]),
    GenerationConfig(max_new_tokens=15, decode_strategy="sampling", seed=11, num_return_sequences=2, stop=["<7"]),
])
def test_stream_deltas_add_up_to_generate(model, config):
    tok = ByteTokenizer()
    finished = [s for seqs in generate(model, tok, TOKEN_PROMPTS, config) for s in seqs]
    rows = collect(stream(model, tok, [Request(p, config) for p in TOKEN_PROMPTS]))
    assert sorted(rows) == list(range(len(finished)))
    for i, seq in enumerate(finished):
        row = rows[i]
        assert (row["text"], row["token_ids"], row["finishes"], row["after_finish"]) == \
            (seq.text, seq.token_ids, [seq.finish_reason], 0)
        assert row["logprobs"] == seq.token_logprobs
        for s in config.stop:
            assert s not in row["text"]


def test_stop_strings_cut_text_and_tokens(model):
    tok = ByteTokenizer()
    free = generate(model, tok, [TOKEN_PROMPTS[0]], GenerationConfig(max_new_tokens=12))[0][0]
    # a stop string made of the end of one `<id>` token and the start of the next
    i = next(i for i in range(2, 11) if min(free.token_ids[i:i + 2]) >= 256)
    stop = tok.decode([free.token_ids[i]])[-2:] + tok.decode([free.token_ids[i + 1]])[:2]
    expected_text = free.text[:free.text.find(stop)]
    stopped = generate(model, tok, [TOKEN_PROMPTS[0]], GenerationConfig(max_new_tokens=12, stop=[stop]))[0][0]
    assert (stopped.text, stopped.finish_reason) == (expected_text, "stop")
    # tokens whose text lies wholly before the stop string; the straddling one is dropped
    kept = max(n for n in range(13) if expected_text.startswith(tok.decode(free.token_ids[:n])))
    assert stopped.token_ids == free.token_ids[:kept]
    assert stopped.token_logprobs == pytest.approx(free.token_logprobs[:kept], abs=1e-5)


def test_eos_ends_a_row_and_counts_in_the_score(model):
    free = generate(model, ByteTokenizer(), [TOKEN_PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0][0]
    at = next(i for i, t in enumerate(free.token_ids) if i >= 2 and t not in free.token_ids[:i])
    eos = free.token_ids[at]
    seq = generate(model, ByteTokenizer(eos_token_id=eos), [TOKEN_PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0][0]
    assert (seq.token_ids, seq.finish_reason) == (free.token_ids[:at], "stop")
    assert seq.score == pytest.approx(sum(free.token_logprobs[:at + 1]), abs=1e-4)

    banned = generate(model, ByteTokenizer(eos_token_id=eos), [TOKEN_PROMPTS[1]],
                      GenerationConfig(max_new_tokens=8, min_new_tokens=at + 2))[0][0]
    assert eos not in banned.token_ids[:at + 2]
    assert len(banned.token_ids) >= at + 2


def test_repetition_penalty_follows_ctrl_on_full_forward_logits(model):
    penalty = 1.8
    prompt = [1, 2, 3, 4, 5]                     # unpenalized, the tiny model loops from here
    free = generate(model, ByteTokenizer(), [prompt], GenerationConfig(max_new_tokens=20))[0][0]
    assert len(set(free.token_ids)) < 20
    seq = generate(model, ByteTokenizer(), [prompt], GenerationConfig(max_new_tokens=20,
                                                                      repetition_penalty=penalty))[0][0]
    assert seq.token_ids != free.token_ids
    with paddle.no_grad():
        logits = model(paddle.to_tensor(np.array([prompt + seq.token_ids]))).numpy()[0]
    for step, token in enumerate(seq.token_ids):
        scores = logits[len(prompt) - 1 + step].copy()
        for seen in set(prompt + seq.token_ids[:step]):
            scores[seen] = scores[seen] * penalty if scores[seen] < 0 else scores[seen] / penalty
        assert token == int(np.argmax(scores))


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(model):
    tok = ByteTokenizer()
    config = GenerationConfig(max_new_tokens=10, decode_strategy="sampling", top_p=0.9, seed=5, num_return_sequences=2)
    alone = generate(model, tok, [TOKEN_PROMPTS[0]], config)[0]
    again = generate(model, tok, [TOKEN_PROMPTS[0]], config)[0]
    other = GenerationConfig(max_new_tokens=4, decode_strategy="sampling", temperature=1.3, seed=9)
    rows = collect(stream(model, tok, [Request(TOKEN_PROMPTS[1], other), Request(TOKEN_PROMPTS[0], config)]))
    assert [s.token_ids for s in alone] == [s.token_ids for s in again] == [rows[1]["token_ids"], rows[2]["token_ids"]]
    assert alone[0].token_ids != alone[1].token_ids
    reseeded = generate(model, tok, [TOKEN_PROMPTS[0]], replace(config, seed=6))[0]
    assert reseeded[0].token_ids != alone[0].token_ids


def test_temperature_zero_sampling_is_greedy(model):
    tok = ByteTokenizer()
    greedy = generate(model, tok, [TOKEN_PROMPTS[0]], GenerationConfig(max_new_tokens=8))[0][0]
    cold = generate(model, tok, [TOKEN_PROMPTS[0]], GenerationConfig(max_new_tokens=8, decode_strategy="sampling",
                                                                temperature=0))[0][0]
    assert cold.token_ids == greedy.token_ids


def test_a_batch_longer_than_the_context_drops_shared_padding(model):
    tok = ByteTokenizer()
    rng = np.random.default_rng(0)
    long_prompt = rng.integers(0, VOCAB, 100).tolist()          # 100 + 20 fits 128
    short_prompt = [1, 2, 3, 4, 5]                              # 5 + 100 fits 128, padded 100 + 100 does not
    requests = [Request(long_prompt, GenerationConfig(max_new_tokens=20)),
                Request(short_prompt, GenerationConfig(max_new_tokens=100))]
    rows = collect(stream(model, tok, requests))
    for request, row in zip(requests, rows.values()):
        alone = generate(model, tok, [request.prompt_ids], request.config)[0][0]
        assert row["token_ids"] == alone.token_ids


def test_cancelled_rows_leave_the_batch_at_once(model):
    spy = Recording(model)
    config = GenerationConfig(max_new_tokens=8)
    run = stream(spy, ByteTokenizer(byte_ids=0), [Request(TOKEN_PROMPTS[0], config), Request(TOKEN_PROMPTS[1], config)])
    seen = []
    for event in run:
        seen.append(event.index)
        if len(seen) == 2:                       # both rows' first tokens are out
            run.cancel(0)
    assert seen[:2] == [0, 1] and set(seen[2:]) == {1}
    # each prompt is prefilled on its own; row 1 then decodes alone
    assert spy.shapes[:2] == [(1, 9), (1, 4)] and spy.shapes[2:] == [(1, 1)] * 7


def test_finished_rows_leave_the_batch(model):
    spy = Recording(model)
    rows = collect(stream(spy, ByteTokenizer(), [Request(TOKEN_PROMPTS[0], GenerationConfig(max_new_tokens=2)),
                                                  Request(TOKEN_PROMPTS[1], GenerationConfig(max_new_tokens=5))]))
    assert [r["finishes"] for r in rows.values()] == [["length"], ["length"]]
    assert [s[0] for s in spy.shapes] == [1, 1, 2, 1, 1, 1]


@pytest.mark.parametrize("requests, message", [
    ([Request([1] * 100, GenerationConfig(max_new_tokens=29))], "max_position_embeddings"),
    ([Request([], GenerationConfig())], "empty"),
    ([Request([1, VOCAB], GenerationConfig())], r"prompt_ids\[1\]"),
    ([Request([1, 2], GenerationConfig(decode_strategy="beam_search", num_beams=2))], "beam search"),
    ([Request([1, 2], GenerationConfig(top_p=0))], "top_p"),
])
def test_bad_requests_are_refused_before_generating(model, requests, message):
    with pytest.raises(ValueError, match=message):
        stream(model, ByteTokenizer(), requests)


def test_generate_checks_prompts_too(model):
    with pytest.raises(ValueError, match=r"prompt_ids\[1\].*max_position_embeddings"):
        generate(model, ByteTokenizer(), [[1, 2], [1] * 120], GenerationConfig(max_new_tokens=10))
    with pytest.raises(ValueError, match=r"prompt_ids\[0\]"):
        generate(model, ByteTokenizer(), [5], GenerationConfig())


# -- processors ----------------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    logits = np.array([[2.0, -2.0, 3.0], [2.0, -2.0, 3.0]], dtype=np.float32)
    seen = np.array([[True, True, False], [True, True, False]])
    apply_repetition_penalty(logits, seen, np.array([2.0, 1.0]))
    assert logits.tolist() == [[1.0, -4.0, 3.0], [2.0, -2.0, 3.0]]


def draws(scores, n=2000, **options):
    rng = np.random.default_rng(0)
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **options}
    with np.errstate(divide="ignore"):                      # log(0) = -inf bans a token
        logits = np.log(np.array(scores))
    return np.bincount([sample_token(logits, rng=rng, **options) for _ in range(n)],
                       minlength=len(scores))


def test_top_k_keeps_the_k_best():
    counts = draws([0.1, 0.3, 0.05, 0.25, 0.3], top_k=3)
    assert counts[[0, 2]].sum() == 0 and (counts[[1, 3, 4]] > 0).all()


def test_a_vanishing_temperature_samples_the_best_token():
    # 5e-324 takes raw logits to +-inf: without care the probabilities are NaN and the last id is drawn
    assert (draws([0.1, 0.5, 0.2, 0.2, 0.0], n=50, temperature=5e-324) == [0, 50, 0, 0, 0]).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    counts = draws([0.1, 0.4, 0.2, 0.3], top_p=0.65)          # 0.4 + 0.3 is the first to reach 0.65
    assert counts[[0, 2]].sum() == 0
    assert counts[1] / counts[3] == pytest.approx(4 / 3, rel=0.15)
    assert (draws([0.1, 0.4, 0.2, 0.3], top_p=0.01) == [0, 2000, 0, 0]).all()


def test_top_p_works_past_a_few_hundred_candidates():
    probs = np.linspace(2.0, 1.0, 300)[np.random.default_rng(1).permutation(300)]
    probs /= probs.sum()
    ranked = np.argsort(-probs)
    size = int(np.argmax(np.cumsum(probs[ranked]) >= 0.9)) + 1      # about 260 of 300
    counts = draws(probs, n=3000, top_p=0.9)
    assert counts[ranked[size:]].sum() == 0 and (counts[ranked[:size]] > 0).sum() > 200


def test_temperature_sharpens_and_flattens():
    probs = [0.2, 0.8]
    assert draws(probs, temperature=0.25)[0] < draws(probs)[0] < draws(probs, temperature=4.0)[0]


def test_sampling_never_draws_a_banned_token():
    assert draws([0.0, 0.5, 0.0, 0.5])[[0, 2]].sum() == 0


def test_top_alternatives_are_the_most_likely_first():
    logprobs = np.log(np.array([0.1, 0.5, 0.15, 0.25]))
    top = top_alternatives(logprobs, 3, lambda t: "abcd"[t])
    assert list(top) == ["b", "d", "c"] and top["b"] == pytest.approx(np.log(0.5))


# -- config ----------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("top_p", 0.0), ("top_p", 1.5), ("temperature", -0.1), ("max_new_tokens", 0), ("max_new_tokens", 2.5),
    ("decode_strategy", "nucleus"), ("num_beams", 0), ("repetition_penalty", 0.0), ("top_k", -1),
    ("min_new_tokens", -1), ("stop", "\n"), ("stop", [""]), ("logprobs", -1), ("num_return_sequences", 0),
    ("temperature", float("nan")), ("seed", "7"),
])
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value}).validate()


def test_validate_checks_beam_options_together():
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(decode_strategy="beam_search", num_beams=2, num_return_sequences=3).validate()
    with pytest.raises(ValueError, match="num_beams"):
        GenerationConfig(decode_strategy="sampling", num_beams=4).validate()
    GenerationConfig(decode_strategy="beam_search", num_beams=4, num_return_sequences=4).validate()


def test_real_tokenizer_never_gets_ids_past_its_vocabulary():
    from codegen.tokenizer import codegen_tokenizer
    tokenizer = codegen_tokenizer()
    model = tiny_model(vocab=51200)                 # CodeGen pads its embedding past the 50295 tokens
    prompt = tokenizer.encode("def fib(n):\n    ")
    config = GenerationConfig(max_new_tokens=60, decode_strategy="sampling", seed=0,
                              num_return_sequences=4, stop=["\n\n"])
    rows = collect(stream(model, tokenizer, [Request(prompt, config)]))
    for row, seq in zip(rows.values(), generate(model, tokenizer, [prompt], config)[0]):
        assert max(seq.token_ids) < len(tokenizer)
        assert seq.text.startswith(tokenizer.decode(seq.token_ids)) and "\n\n" not in seq.text
        assert (row["text"], row["token_ids"]) == (seq.text, seq.token_ids)

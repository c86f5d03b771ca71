"""Beam search against exhaustive search on a 6-token model, and against greedy search."""
from itertools import product

import numpy as np
import pytest
from conftest import TOKEN_PROMPTS, ByteTokenizer, Recording, full_logits, log_softmax, tiny_model

from codegen.generation import GenerationConfig, generate


SMALL_VOCAB, EOS = 6, 5


@pytest.fixture(scope="module")
def small_model():
    model = tiny_model(seed=1, vocab=SMALL_VOCAB)
    # make EOS and token 2 (the stop string's) likely enough to end some of the best sequences
    model.lm_head.bias.set_value(np.array([0, 0.3, 1.6, 0.3, 0, 1.0], dtype=np.float32))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def exhaustive(model, tokenizer, prompt, max_new, length_penalty, repetition_penalty=1.0, stop=None, best=5):
    """Every possible continuation scored as sum(logprobs) / length ** length_penalty; the best as (text, score).

    A continuation ends at EOS (counted in its length), at the token that completes
    `stop` (counted, its text cut before the stop), or after max_new tokens.
    """
    def ends(token):
        return token == EOS or (stop is not None and stop in tokenizer.decode([token]))

    def text_of(tokens):
        text = tokenizer.decode(tokens)
        return text[:text.find(stop)] if stop is not None and stop in text else text

    def processed(ids):
        logits = full_logits(model, ids)
        for position in range(len(prompt) - 1, len(ids)):
            row = logits[position]
            for seen in set(ids[:position + 1]):
                row[seen] = row[seen] * repetition_penalty if row[seen] < 0 else row[seen] / repetition_penalty
        return log_softmax(logits)

    scores = {}
    live = [t for t in range(SMALL_VOCAB) if not ends(t)]
    for prefix in product(live, repeat=max_new - 1):
        logprobs = processed(prompt + list(prefix))[len(prompt) - 1:]
        total = 0.0
        for step in range(max_new):
            for token in range(SMALL_VOCAB):
                if ends(token) or step == max_new - 1:
                    tokens = list(prefix[:step]) + [token]
                    scores[text_of(tokens)] = (total + logprobs[step, token]) / (step + 1) ** length_penalty
            if step < max_new - 1:
                total += logprobs[step, prefix[step]]
    return sorted(scores.items(), key=lambda item: -item[1])[:best]


@pytest.mark.parametrize("length_penalty, repetition_penalty, stop", [
    (1.0, 1.0, None), (0.0, 1.0, None), (2.0, 1.0, None), (-0.5, 1.0, None), (1.0, 1.6, None), (1.0, 1.0, "2>"),
])
def test_wide_beams_find_the_exhaustive_best(small_model, length_penalty, repetition_penalty, stop):
    tokenizer = ByteTokenizer(vocab=SMALL_VOCAB, eos_token_id=EOS, byte_ids=0)
    prompt = [1, 2, 3, 0]
    # 36 beams hold every live prefix of 2 tokens, so 3-token search is exhaustive
    config = GenerationConfig(max_new_tokens=3, decode_strategy="beam_search", num_beams=36, num_return_sequences=5,
                              length_penalty=length_penalty, repetition_penalty=repetition_penalty,
                              stop=[stop] if stop else [])
    found = generate(small_model, tokenizer, [prompt], config)[0]
    expected = exhaustive(small_model, tokenizer, prompt, 3, length_penalty, repetition_penalty, stop)
    assert [s.text for s in found] == [text for text, _ in expected]
    assert [s.score for s in found] == pytest.approx([score for _, score in expected], abs=1e-4)
    for seq in found:
        assert seq.finish_reason == ("length" if len(seq.token_ids) == 3 else "stop")
        assert seq.text.startswith(tokenizer.decode(seq.token_ids))   # a token straddling the stop is dropped


def test_one_beam_is_greedy(model):
    tokenizer = ByteTokenizer()
    greedy = generate(model, tokenizer, TOKEN_PROMPTS, GenerationConfig(max_new_tokens=10, logprobs=2))
    beam = generate(model, tokenizer, TOKEN_PROMPTS, GenerationConfig(max_new_tokens=10, decode_strategy="beam_search",
                                                                num_beams=1, logprobs=2))
    for (g,), (b,) in zip(greedy, beam):
        assert (b.token_ids, b.text, b.finish_reason) == (g.token_ids, g.text, g.finish_reason)
        assert b.token_logprobs == pytest.approx(g.token_logprobs, abs=1e-5)
        assert b.score == pytest.approx(g.score / 10, abs=1e-5)      # length-normalised
        assert [list(t) for t in b.top_logprobs] == [list(t) for t in g.top_logprobs]


def test_one_beam_is_greedy_through_eos(model):
    free = generate(model, ByteTokenizer(), [TOKEN_PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0][0]
    at = next(i for i, t in enumerate(free.token_ids) if i >= 2 and t not in free.token_ids[:i])
    tokenizer = ByteTokenizer(eos_token_id=free.token_ids[at])
    greedy = generate(model, tokenizer, [TOKEN_PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0][0]
    beam = generate(model, tokenizer, [TOKEN_PROMPTS[1]], GenerationConfig(
        max_new_tokens=8, decode_strategy="beam_search", num_beams=1, length_penalty=0.0))[0][0]
    assert (beam.token_ids, beam.finish_reason) == (greedy.token_ids, "stop") == (free.token_ids[:at], "stop")
    assert beam.score == pytest.approx(greedy.score, abs=1e-4)


def test_batched_beams_match_each_prompt_alone(model):
    tokenizer = ByteTokenizer()
    config = GenerationConfig(max_new_tokens=6, decode_strategy="beam_search", num_beams=3, num_return_sequences=2)
    together = generate(model, tokenizer, TOKEN_PROMPTS, config)
    for prompt, seqs in zip(TOKEN_PROMPTS, together):
        alone = generate(model, tokenizer, [prompt], config)[0]
        assert [s.token_ids for s in seqs] == [s.token_ids for s in alone]
        assert seqs[0].score >= seqs[1].score


def test_wider_beams_never_score_worse_here(model):
    tokenizer = ByteTokenizer()
    scores = [generate(model, tokenizer, [TOKEN_PROMPTS[0]], GenerationConfig(
        max_new_tokens=5, decode_strategy="beam_search", num_beams=n))[0][0].score for n in (1, 4)]
    assert scores[1] >= scores[0]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
def test_stopping_early_loses_nothing(monkeypatch, length_penalty):
    from codegen.generation import beam
    model = tiny_model(seed=1, vocab=SMALL_VOCAB)
    model.lm_head.bias.set_value(np.array([0, 0.3, 1.6, 0.3, 0, 2.5], dtype=np.float32))   # EOS is common
    tokenizer = ByteTokenizer(vocab=SMALL_VOCAB, eos_token_id=EOS, byte_ids=0)
    config = GenerationConfig(max_new_tokens=10, decode_strategy="beam_search", num_beams=3,
                              num_return_sequences=3, length_penalty=length_penalty)
    prompts = [[1, 2, 3, 0], [4, 4, 1]]
    spy = Recording(model)
    early = generate(spy, tokenizer, prompts, config)
    monkeypatch.setattr(beam._PromptSearch, "_cannot_improve", lambda self, best, length: False)
    full = generate(model, tokenizer, prompts, config)
    assert [[(s.text, s.finish_reason) for s in seqs] for seqs in early] == \
        [[(s.text, s.finish_reason) for s in seqs] for seqs in full]
    assert [s.score for seqs in early for s in seqs] == pytest.approx([s.score for seqs in full for s in seqs])
    if length_penalty <= 0:                         # only then can a finished hypothesis be known best early
        assert len(spy.shapes) < config.max_new_tokens

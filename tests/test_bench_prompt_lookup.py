"""The bound bench/bench_prompt_lookup.py reports beside prompt lookup's speed-up: the forward passes a
clairvoyant drafter copying earlier text would need. bench/prompt_lookup.md argues from it, so it must
be a bound the real decode loop never beats, and reached where every draft the lookup makes is right."""
import sys
from pathlib import Path

import pytest
from conftest import CYCLE, CYCLE_PROMPT, LOOKUP_PROMPTS, VOCAB, ScriptedModel, run, tiny_model

from codegen.generation import GenerationConfig


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_prompt_lookup import clairvoyant  # noqa: E402


def test_each_pass_drafts_the_longest_continuation_the_model_keeps_extended_periodically():
    prompt, tokens = [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 1, 2, 9]
    # after the first token (the prefill's), "1" occurred at the prompt's start: 2 3 4 5 1, then
    # periodically 2 ..., all kept but the last token, which the pass itself chooses
    assert clairvoyant(prompt, tokens, 8) == [6]
    # at most k: 4 drafts, then "1" again: of its two occurrences, one continues with the "2" kept
    assert clairvoyant(prompt, tokens, 4) == [4, 1]
    # nothing occurred before: one token a pass
    assert clairvoyant([7], [1, 2, 3], 8) == [0, 0]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_the_decode_loop_never_needs_fewer_passes_than_the_bound(k):
    config = GenerationConfig(max_new_tokens=40, prompt_lookup_num_tokens=k)
    for model in (tiny_model(), ScriptedModel({1: 2, 2: 3, 3: 1, 4: 1, 5: 4}, vocab=VOCAB, n_positions=128)):
        for prompt in LOOKUP_PROMPTS + [[5, 4, 1, 2, 9, 5]]:
            sequence, _, batch = run(model, prompt, config)
            assert batch.decode_steps >= len(clairvoyant(prompt, sequence.token_ids, k))


def test_the_bound_is_reached_when_every_draft_is_right():
    model = ScriptedModel(CYCLE, vocab=128)
    config = GenerationConfig(max_new_tokens=30, prompt_lookup_num_tokens=6)
    sequence, _, batch = run(model, CYCLE_PROMPT, config)
    drafts = clairvoyant(CYCLE_PROMPT, sequence.token_ids, 6)
    assert batch.decode_steps == len(drafts) == 5 and sum(drafts) == batch.accepted

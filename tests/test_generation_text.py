"""Streamed text: whole characters only, stop strings never leak, tokens follow the text.

A scripted model emits chosen byte pieces one token at a time, then EOS.
"""
import pytest
from conftest import ByteTokenizer, ScriptedModel

from codegen.generation import GenerationConfig, Request, generate, stream



def scripted(pieces):
    """(model, tokenizer): after prompt [0] the model emits ids 1..n with `pieces` as their bytes, then EOS."""
    n = len(pieces)
    tokenizer = ByteTokenizer(vocab=n + 2, eos_token_id=n + 1, pieces=dict(enumerate(pieces, start=1)))
    model = ScriptedModel({i: i + 1 for i in range(n + 1)}, vocab=n + 2)
    return model, tokenizer


def run(pieces, **options):
    """Stream the script; return its events and the matching `generate` result."""
    model, tokenizer = scripted(pieces)
    config = GenerationConfig(**{"max_new_tokens": 16, **options})
    events = list(stream(model, tokenizer, [Request([0], config)]))
    final = generate(model, tokenizer, [[0]], config)[0][0]
    assert "".join(e.text for e in events) == final.text
    assert [t for e in events for t in e.token_ids] == final.token_ids
    assert [e.finish_reason for e in events][-1] == final.finish_reason
    assert all(e.finish_reason is None for e in events[:-1])
    return events, final, tokenizer


def test_characters_split_across_tokens_are_sent_whole():
    events, final, tokenizer = run([b"a\xc3", b"\xa9b", b"\xe6", b"\xbc", b"\xa2!"])
    assert final.text == "a\u00e9b\u6f22!" and final.finish_reason == "stop"
    assert final.token_ids == [1, 2, 3, 4, 5]
    assert all("\ufffd" not in e.text for e in events)
    text, tokens = "", []
    for e in events:                       # tokens follow the text, never ahead of it
        text, tokens = text + e.text, tokens + e.token_ids
        assert text.startswith(tokenizer.decode(tokens))


def test_an_unfinished_last_character_becomes_a_replacement_like_decode():
    _, final, tokenizer = run([b"ok\xe6\xbc"])
    assert final.text == tokenizer.decode(final.token_ids) == "ok\ufffd"


def test_a_stop_string_across_tokens_never_reaches_the_stream():
    events, final, _ = run([b"ab", b"c\nd", b"ef", b"gh"], stop=["\nde"])
    assert [e.text for e in events if e.text] == ["ab", "c"]
    assert (final.text, final.finish_reason) == ("abc", "stop")
    assert final.token_ids == [1]          # token 2 holds both "c" and the start of the stop string


def test_held_back_text_is_released_once_it_cannot_start_a_stop():
    events, final, _ = run([b"x\nd", b"og", b"!"], stop=["\ndef"])
    assert [e.text for e in events if e.text] == ["x", "\ndog", "!"]
    assert (final.text, final.token_ids, final.finish_reason) == ("x\ndog!", [1, 2, 3], "stop")


@pytest.mark.parametrize("max_new_tokens, reason", [(2, "length"), (16, "stop")])
def test_held_back_text_is_released_at_the_end(max_new_tokens, reason):
    events, final, _ = run([b"a", b"b\n"], stop=["\nz"], max_new_tokens=max_new_tokens)
    assert all("\n" not in e.text for e in events[:-1]) and events[-1].text.endswith("\n")
    assert (final.text, final.finish_reason) == ("ab\n", reason)


def test_the_earliest_of_several_stops_wins():
    _, final, _ = run([b"abcd"], stop=["cd", "b"])
    assert (final.text, final.token_ids) == ("a", [])


def test_a_stop_in_the_first_token_gives_empty_output():
    events, final, _ = run([b"STOP", b"more"], stop=["ST"])
    assert (final.text, final.token_ids, final.finish_reason) == ("", [], "stop")
    assert [e.text for e in events] == [""]


def test_a_stop_string_ending_in_a_split_character():
    _, final, _ = run([b"x\xc3", b"\xa9y"], stop=["\u00e9"])
    assert (final.text, final.token_ids) == ("x", [])   # token 1 carries the first byte of the stop


def test_eos_is_not_part_of_the_output_but_ends_it():
    events, final, _ = run([b"one", b"two"])
    assert (final.text, final.token_ids, final.finish_reason) == ("onetwo", [1, 2], "stop")
    assert len(final.token_logprobs) == 2

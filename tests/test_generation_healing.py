"""Token healing: a prompt ending in whitespace that the vocabulary merges with what follows.

With the "bpe" tokenizer a newline and the next line's indentation are one token, so a prompt ending in
"\n" loses that token and generation regenerates it, extended ("\n" -> "\n    "), reporting only the text
after it.
"""
import json
import sys

import numpy as np
import paddle
import pytest
from conftest import REPO, ByteTokenizer

from codegen.checkpoints import init_random_codegen, load_model
from codegen.generation import GenerationConfig, Request, generate, stream
from codegen.generation.beam import _PromptSearch
from codegen.generation.detokenize import IncrementalText
from codegen.tokenizer import codegen_tokenizer, load_tokenizer




@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tools"))
    from train_tokenizer import train
    root = tmp_path_factory.mktemp("healing")
    corpus = root / "train.jsonl"
    sources = sorted((REPO / "codegen").rglob("*.py"))
    corpus.write_text("".join(json.dumps({"code": p.read_text()}) + "\n" for p in sources))
    tokenizer = load_tokenizer(train(corpus, root / "tok", vocab_size=1024))
    directory = init_random_codegen(root / "model", tokenizer=tokenizer, n_embd=32, n_layer=1, n_head=4,
                                    rotary_dim=4, n_positions=128)
    model = load_model(directory)
    model.eval()
    return model, tokenizer


def test_bpe_prompts_ending_in_whitespace_lose_that_token(bpe_model):
    _, tokenizer = bpe_model
    ids = tokenizer.encode('def f(x):\n    """Doc."""\n')
    healed_ids, healed = tokenizer.heal(ids)
    assert healed == "\n" and healed_ids == ids[:-1]
    assert any(len(tokenizer.decode([i])) > 1 for i in tokenizer.ids_starting_with("\n"))
    assert all(tokenizer.decode([i]).startswith("\n") for i in tokenizer.ids_starting_with("\n"))
    assert tokenizer.heal(tokenizer.encode("x = 1")) == (tokenizer.encode("x = 1"), "")
    gpt2 = codegen_tokenizer()
    assert gpt2.heal(gpt2.encode("x = 1\n")) == (gpt2.encode("x = 1\n"), "")


@pytest.mark.parametrize("strategy", ["greedy_search", "sampling"])
def test_the_first_token_extends_the_healed_text_and_the_output_omits_it(bpe_model, strategy):
    model, tokenizer = bpe_model
    prompt = tokenizer.encode("class A:\n    def f(self):\n")
    config = GenerationConfig(max_new_tokens=6, decode_strategy=strategy, seed=1, num_return_sequences=3)
    with paddle.no_grad():
        sequences = generate(model, tokenizer, [prompt], config)[0]
        streamed = list(stream(model, tokenizer, [Request(prompt, config)]))
    for row, sequence in enumerate(sequences):
        assert sequence.token_ids[0] in tokenizer.ids_starting_with("\n")
        full = tokenizer.decode(sequence.token_ids)
        assert sequence.text == full[1:]
        assert "".join(e.text for e in streamed if e.index == row) == sequence.text


def test_beam_search_heals_the_prompt_too(bpe_model):
    model, tokenizer = bpe_model
    prompt = tokenizer.encode("class A:\n    def f(self):\n")
    config = GenerationConfig(max_new_tokens=6, decode_strategy="beam_search", num_beams=3, num_return_sequences=3)
    with paddle.no_grad():
        sequences = generate(model, tokenizer, [prompt], config)[0]
    assert len(sequences) == 3
    for sequence in sequences:
        assert sequence.token_ids[0] in tokenizer.ids_starting_with("\n")
        assert sequence.text == tokenizer.decode(sequence.token_ids)[1:]


def test_beam_search_stops_count_only_after_the_healed_text():
    tokenizer = ByteTokenizer(pieces={300: b"\n    x", 301: b" = 1\n", 302: b"y"})
    config = GenerationConfig(max_new_tokens=4, decode_strategy="beam_search", num_beams=1, stop=["\n"])
    search = _PromptSearch(config, tokenizer, stop_window=8, healed="\n", first_choices=[300])
    scores = np.full((1, 303), -50.0, dtype=np.float32)
    for length, token in enumerate([300, 301], start=1):
        step_scores = scores.copy()
        step_scores[0, token] = 0.0
        search.advance(step_scores, step_scores, length)
        # the prompt's own newline does not stop the beam; the generated one does
        assert search.done == (token == 301)
    [sequence] = search.results()
    assert sequence.text == "    x = 1" and sequence.finish_reason == "stop"


def test_a_hidden_prefix_never_shows_and_only_stops_that_end_after_it_count():
    tokenizer = ByteTokenizer(pieces={300: b"\ndef", 301: b"\n    x", 302: b" = 1\n", 303: b"y"})

    def text(tokens, stops, hidden):
        out = IncrementalText(tokenizer, stops, hidden=hidden)
        stopped = any(out.add(t) for t in tokens)
        out.finish()
        return out.text, stopped

    # the prompt's newline followed by `def`: the function is over before it began
    assert text([300], ["\ndef"], "\n") == ("", True)
    # a stop "\n" does not fire on the prompt's own newline, but on the next one
    assert text([301, 302, 303], ["\n"], "\n") == ("    x = 1", True)
    assert text([301, 302], [], "\n") == ("    x = 1\n", False)

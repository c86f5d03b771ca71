"""Perplexity with a sliding window, checked against direct forward passes of a tiny random model."""
import math

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from codegen.evaluation.perplexity import code_files, perplexity, score_tokens  # noqa: E402
from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM  # noqa: E402

VOCAB = 64


class CharTokenizer:
    eos_token_id = 0

    def encode(self, text):
        return [1 + ord(c) % (VOCAB - 1) for c in text]


@pytest.fixture(scope="module")
def model():
    paddle.seed(3)
    config = CodeGenConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)
    m = CodeGenForCausalLM(config)
    m.eval()
    return m


def nll_of_last(model, context, target):
    logits = model(paddle.to_tensor([context], dtype="int64"))[0, -1].numpy().astype(np.float64)
    return -(logits[target] - logits.max() - math.log(np.exp(logits - logits.max()).sum()))


def test_one_window_equals_a_full_forward(model):
    ids = [(7 * i + 3) % (VOCAB - 1) + 1 for i in range(40)]
    sequence = [0] + ids
    logits = model(paddle.to_tensor([sequence], dtype="int64"))[0].numpy().astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -sum(log_probs[t, sequence[t + 1]] for t in range(len(ids)))
    nll, count = score_tokens(model, ids, window=64, stride=63, start_id=0)
    assert count == 40
    assert nll == pytest.approx(expected, rel=1e-5)


def test_stride_one_predicts_each_token_from_the_window_before_it(model):
    ids = [(5 * i + 1) % (VOCAB - 1) + 1 for i in range(20)]
    window = 6
    sequence = [0] + ids
    expected = sum(nll_of_last(model, sequence[max(0, j + 1 - window):j], sequence[j])
                   for j in range(1, len(sequence)))
    nll, count = score_tokens(model, ids, window=window, stride=1, start_id=0)
    assert count == 20
    assert nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("window,stride", [(8, 3), (8, 7), (5, 4), (64, 32)])
def test_every_token_scored_once(model, window, stride):
    ids = [(3 * i) % (VOCAB - 1) + 1 for i in range(50)]
    _, count = score_tokens(model, ids, window=window, stride=stride, start_id=0)
    assert count == 50
    _, count = score_tokens(model, ids, window=window, stride=stride, start_id=None)
    assert count == 49


def test_window_size_does_not_matter_when_the_file_fits(model):
    ids = [1 + (i % 5) for i in range(30)]
    full, _ = score_tokens(model, ids, window=64, stride=63, start_id=0)
    same, _ = score_tokens(model, ids, window=40, stride=39, start_id=0)
    assert full == pytest.approx(same, rel=1e-6)


def test_stride_must_leave_context(model):
    with pytest.raises(ValueError, match="stride"):
        score_tokens(model, [1, 2, 3], window=4, stride=4, start_id=0)


def test_per_language_by_extension(model, tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "b.go").write_text("package main\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.py").write_text("ignored = True\n")
    files = code_files([tmp_path])
    assert sorted((p.name, lang) for p, lang in files) == [("a.py", "python"), ("b.go", "go"), ("c.py", "python")]
    scores = perplexity(model, CharTokenizer(), files, window=16, stride=8)
    assert scores["python"].files == 2 and scores["python"].tokens == len("def f():\n    return 1\n") + len("x = 1\n")
    assert scores["go"].tokens == len("package main\n")
    assert scores["all"].tokens == scores["python"].tokens + scores["go"].tokens
    expected = math.exp((scores["python"].nll + scores["go"].nll) / scores["all"].tokens)
    assert scores["all"].perplexity == pytest.approx(expected)
    # a random model over 64 symbols is roughly uniform
    assert 20 < scores["all"].perplexity < 200


def test_unknown_extension_given_directly_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="notes.txt: cannot tell the language"):
        code_files([path])
    with pytest.raises(FileNotFoundError):
        code_files([tmp_path / "missing.py"])

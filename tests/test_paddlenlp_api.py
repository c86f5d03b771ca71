"""PaddleNLP's low-level API (`from codegen import CodeGenTokenizer, CodeGenForCausalLM`) on the predictor."""
import numpy as np
import paddle
import pytest

from codegen import CodeGeeXForCausalLM, CodeGeeXTokenizer, CodeGenForCausalLM, CodeGenTokenizer, Taskflow
from codegen.predictor import DEFAULT_MODEL
from codegen.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    return CodeGenTokenizer.from_pretrained(str(tiny_model_dir)), CodeGenForCausalLM.from_pretrained(str(tiny_model_dir))


def test_tokenizer_returns_ids_and_mask_as_lists_or_tensors(pair, tiny_model_dir):
    tokenizer, _ = pair
    ids = load_tokenizer(tiny_model_dir).encode("def add(a, b):")
    assert tokenizer(["def add(a, b):"]) == {"input_ids": [ids], "attention_mask": [[1] * len(ids)]}
    assert tokenizer("def add(a, b):") == {"input_ids": ids, "attention_mask": [1] * len(ids)}
    as_pd = tokenizer(["def add(a, b):"], truncation=True, return_tensors="pd")
    assert isinstance(as_pd["input_ids"], paddle.Tensor) and as_pd["input_ids"].numpy().tolist() == [ids]
    padded = tokenizer(["x", "def add(a, b):"], padding=True, return_tensors="np")
    assert padded["input_ids"][0].tolist()[-1] == load_tokenizer(tiny_model_dir).encode("x")[-1]
    assert padded["attention_mask"][0].tolist() == [0] * (len(ids) - 1) + [1]
    with pytest.raises(ValueError, match="padding=True"):
        tokenizer(["x", "def add(a, b):"], return_tensors="pd")


def test_generate_returns_new_ids_and_mean_logprob_and_equals_taskflow(pair, tiny_model_dir):
    tokenizer, model = pair
    prompts = ["def add(a, b):", "import os\nimport sys\n"]
    inputs = tokenizer(prompts, padding=True, return_tensors="pd")
    ids, scores = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_length=12,
                                 decode_strategy="greedy_search")
    assert ids.shape == [2, 12] and ids.dtype == paddle.int64 and scores.shape == [2, 1]
    flow = Taskflow("code_generation", model=str(tiny_model_dir), decode_strategy="greedy_search", max_length=12,
                    repetition_penalty=1.0, stop=[], output_scores=True)
    texts, sums = flow(prompts)
    assert [tokenizer.decode(row, skip_special_tokens=True) for row in ids] == texts
    # PaddleNLP's score: the running mean of the chosen tokens' log-probabilities
    np.testing.assert_allclose(scores.numpy()[:, 0], np.asarray(sums) / 12, rtol=1e-5)


def test_a_row_ended_by_end_of_text_keeps_it_then_pads(tiny_model_dir, monkeypatch):
    from codegen.generation import Sequence
    model = CodeGenForCausalLM.from_pretrained(str(tiny_model_dir))
    eos = model.predictor.tokenizer.eos_token_id
    # what the decode loop reports for two prompts: one ended by end-of-text after 1 token, one by length
    finished = [[Sequence([7], "x", "stop", -3.0, [-1.0])], [Sequence([8, 9, 10], "abc", "length", -3.0, [-1.0] * 3)]]
    monkeypatch.setattr(model.predictor, "generate", lambda prompts, config: finished)
    ids, scores = model.generate([[1, 2], [3, 4]], max_length=3)
    assert ids.numpy().tolist() == [[7, eos, eos], [8, 9, 10]]
    # the end-of-text token's log-probability is in the score, and counts in the mean
    np.testing.assert_allclose(scores.numpy(), [[-1.5], [-1.0]])


def test_sampling_options_and_num_return_sequences(pair):
    _, model = pair
    ids, scores = model.generate(paddle.to_tensor([[10, 11, 12]]), max_length=6, decode_strategy="sampling",
                                 temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1,
                                 num_return_sequences=3, seed=3, use_faster=True)
    again, _ = model.generate(paddle.to_tensor([[10, 11, 12]]), max_length=6, decode_strategy="sampling",
                              temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1,
                              num_return_sequences=3, seed=3, use_fast=True)
    assert ids.shape == [3, 6] and (ids.numpy() == again.numpy()).all()
    assert (scores.numpy() <= 0).all()
    beams, _ = model.generate(paddle.to_tensor([[10, 11, 12]]), max_length=4, decode_strategy="beam_search",
                              num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 2


def test_use_fp16_decoding_reloads_the_weights_once(tiny_model_dir):
    model = CodeGenForCausalLM.from_pretrained(str(tiny_model_dir))
    fp32 = model.predictor
    model.generate([[10, 11]], max_length=2, use_fp16_decoding=False)
    assert model.predictor is fp32
    model.generate([[10, 11]], max_length=2, use_fp16_decoding=True)
    assert model.predictor is not fp32 and model.load_options["use_fp16_decoding"] is True


def test_decode_skips_special_tokens_and_truncates_like_paddlenlp(pair, tiny_model_dir):
    tokenizer, _ = pair
    raw = load_tokenizer(tiny_model_dir)
    text = "def f():\n    return 1\n\n\n# next\nprint(f())\n"
    ids = raw.encode(text) + [raw.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(paddle.to_tensor(ids)).endswith("<|endoftext|>")
    assert tokenizer.decode(np.asarray(ids), skip_special_tokens=True, spaces_between_special_tokens=False,
                            truncate_before_pattern=[r"\n\n^#", "^'''", "\n\n\n"]) == "def f():\n    return 1"


def test_names_resolve_as_load_model_does_and_families_are_checked(tmp_path, monkeypatch):
    assert len(CodeGenTokenizer.from_pretrained(DEFAULT_MODEL)) == 8192
    with pytest.raises(FileNotFoundError, match="codegen convert"):
        CodeGenForCausalLM.from_pretrained("Salesforce/codegen-16B-mono-not-here")
    with pytest.raises(ValueError, match="CodeGenForCausalLM"):
        CodeGeeXForCausalLM.from_pretrained(DEFAULT_MODEL)
    with pytest.raises(ValueError, match="CodeGenTokenizer"):
        CodeGeeXTokenizer.from_pretrained(DEFAULT_MODEL)


def test_bad_inputs_name_the_argument(pair):
    _, model = pair
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate([[1, 2, 3]], attention_mask=[[1, 1]])
    with pytest.raises(ValueError, match="input_ids"):
        model.generate([[1.5, 2.0]])
    with pytest.raises(ValueError, match="decode_strategy"):
        model.generate([[1, 2]], decode_strategy="nucleus")
    with pytest.raises(TypeError, match="diversity_rate"):
        model.generate([[1, 2]], diversity_rate=0.5)

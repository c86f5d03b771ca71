"""CodeGeeX on the fused CPU kernels (`FastCodeGeeXForCausalLM`) against the plain Paddle model and
THUDM's reference outputs, in fp32 and in the narrow weight formats.

The first use of the kernels may compile them (~20 s, then cached under $CODEGEN_HOME/kernels).
"""
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from codegen.checkpoints import load_model
from codegen.inference import load_for_inference
from codegen.inference.fast import make_fast
from codegen.inference.fast_codegeex import FastCodeGeeXForCausalLM
from codegen.inference.quantize import WeightOnlyLinear
from conftest import copy_codegeex

FIXTURES = Path(__file__).parent / "fixtures" / "codegeex"
REFERENCE = np.load(FIXTURES / "codegeex-tiny-a.npz")
FORMATS = ["int8", "fp16", "bf16"]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the kernels cannot be built here")


@pytest.fixture(scope="module")
def plain(golden_codegeex_dir):
    return load_model(golden_codegeex_dir)


@pytest.fixture(scope="module")
def fast(golden_codegeex_dir):
    model = load_for_inference(golden_codegeex_dir)
    assert isinstance(model, FastCodeGeeXForCausalLM)
    return model


def logits(model, ids, mask=None, cache=None) -> np.ndarray:
    with paddle.no_grad():
        mask = None if mask is None else paddle.to_tensor(mask, dtype="int64")
        return model(paddle.to_tensor(ids, dtype="int64"), mask, cache).numpy()


def greedy(model, prompt, new_tokens: int) -> list[int]:
    cache = model.new_cache(batch_size=1)
    ids, out = prompt, []
    for _ in range(new_tokens):
        step = logits(model, ids, cache=cache)
        out.append(int(step[0, -1].argmax()))
        ids = [[out[-1]]]
    return out


# ---- fp32: the plain path's and the reference's numbers ------------------------------------

def test_the_loader_puts_codegeex_on_the_fused_kernels_with_qkv_packed(fast):
    # 3 standard layers and the top-query layer: Q, K and V one weight each, read in one pass
    packed = [layer.attention.qkv for layer in [*fast.model.layers, fast.model.top_query_layer]]
    assert len(packed) == 4 and all(isinstance(qkv, WeightOnlyLinear) and qkv.weight.shape == [192, 64]
                                    for qkv in packed)
    assert not hasattr(fast.model.layers[0].attention, "query")


def test_fp32_logits_match_the_plain_path_and_the_reference(fast, plain):
    ids = REFERENCE["input_ids"]  # 2 x 16 tokens: the prompt GEMMs
    ours = logits(fast, ids)
    assert np.abs(ours - REFERENCE["logits"]).max() <= 1e-4
    np.testing.assert_allclose(ours, logits(plain, ids), atol=1e-5, rtol=0)
    # one row of 16 tokens: the matrix-vector kernels
    np.testing.assert_allclose(logits(fast, ids[:1]), REFERENCE["logits"][:1], atol=1e-4, rtol=0)


def test_fp32_greedy_tokens_equal_the_reference_and_the_plain_path(fast, plain):
    prompt = REFERENCE["greedy_prompt"].tolist()
    expected = REFERENCE["greedy_new_ids"][0].tolist()
    assert greedy(fast, prompt, len(expected)) == expected
    assert greedy(fast, prompt, 40) == greedy(plain, prompt, 40)


def test_taskflow_and_predictor_generate_the_reference_continuation_on_the_fused_path(golden_codegeex_dir):
    from codegen import Taskflow
    from codegen.generation import GenerationConfig
    expected = REFERENCE["greedy_new_ids"][0].tolist()
    flow = Taskflow("code_generation", model=str(golden_codegeex_dir), decode_strategy="greedy_search",
                    max_length=len(expected), min_length=len(expected), repetition_penalty=1.0, stop=[])
    assert isinstance(flow.predictor.model, FastCodeGeeXForCausalLM)
    prompt = REFERENCE["greedy_prompt"][0].tolist()
    assert flow([prompt]) == [flow.predictor.tokenizer.decode(expected)]
    (sequence,), = flow.predictor.generate([prompt], GenerationConfig(max_new_tokens=len(expected),
                                                                      min_new_tokens=len(expected)))
    assert sequence.token_ids == expected


def test_cached_decoding_equals_a_full_forward(fast):
    ids = REFERENCE["input_ids"]
    full = logits(fast, ids)
    cache = fast.new_cache(batch_size=2, max_length=ids.shape[1])
    # a prompt (GEMMs), then steps of 1 and 3 tokens (matvecs): keys and values of every layer,
    # the top-query layer's included, come back from the cache
    pieces = [logits(fast, ids[:, a:b], cache=cache) for a, b in ((0, 9), (9, 10), (10, 13), (13, 16))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def test_a_left_padded_batch_equals_each_row_alone(fast):
    short, long = REFERENCE["input_ids"][0, :5], REFERENCE["input_ids"][1, :12]
    ids = np.zeros((2, 12), dtype=np.int64)
    mask = np.zeros((2, 12), dtype=np.int64)
    ids[0, 7:], mask[0, 7:] = short, 1
    ids[1], mask[1] = long, 1
    batched = logits(fast, ids, mask)
    np.testing.assert_allclose(batched[0, 7:], logits(fast, [short])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched[1], logits(fast, [long])[0], atol=1e-5, rtol=0)
    # the padded row keeps going from the cache, its positions those of the row alone
    cache = fast.new_cache(batch_size=2)
    logits(fast, ids, mask, cache)
    step = logits(fast, [[3], [4]], np.concatenate([mask, [[1], [1]]], axis=1), cache)
    np.testing.assert_allclose(step[0, 0], logits(fast, [[*short, 3]])[0, -1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(step[1, 0], logits(fast, [[*long, 4]])[0, -1], atol=1e-5, rtol=0)


def test_steps_past_the_context_or_the_cache_are_refused(fast):
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        logits(fast, np.zeros((1, 65), dtype=np.int64))
    cache = fast.new_cache(1, max_length=4)
    logits(fast, [[1, 2, 3]], cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 4 positions; this step needs 5"):
        logits(fast, [[1, 2]], cache=cache)
    with pytest.raises(ValueError, match="attention_mask covers 3 positions"):
        logits(fast, [[1]], np.ones((1, 3)), fast.new_cache(1, max_length=8))


# ---- narrow weights -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FORMATS)
def test_narrow_weights_greedy_tokens_equal_fp32_on_the_golden_prompt(golden_codegeex_dir, dtype):
    flags = {"quantize": "int8"} if dtype == "int8" else {}
    model = make_fast(load_model(golden_codegeex_dir), dtype) if dtype == "bf16" else load_for_inference(
        golden_codegeex_dir, **flags, use_fp16_decoding=dtype == "fp16")
    assert {layer.weight_dtype for layer in model.model.sublayers() if isinstance(layer, WeightOnlyLinear)} == \
        {{"int8": "int8", "fp16": "float16", "bf16": "bfloat16"}[dtype]}
    expected = REFERENCE["greedy_new_ids"][0].tolist()
    assert greedy(model, REFERENCE["greedy_prompt"].tolist(), len(expected)) == expected


@pytest.mark.parametrize("dtype", FORMATS)
def test_narrow_weights_top1_agrees_with_fp32_on_held_out_code(trained_codegeex, dtype):
    """Teacher-forced over 8 windows of 64 held-out tokens (512 predictions), decoded a token a step
    (the matrix-vector kernels: the weights alone are narrow) and as prompts (the GEMMs)."""
    model, tokens = trained_codegeex
    reference = logits(model, tokens).argmax(-1)
    fast = make_fast(copy_codegeex(model), dtype)
    cache = fast.new_cache(8, max_length=64)
    stepped = np.concatenate([logits(fast, tokens[:, t:t + 1], cache=cache) for t in range(64)], axis=1)
    assert (stepped.argmax(-1) == reference).mean() >= 0.99
    assert (logits(fast, tokens).argmax(-1) == reference).mean() >= 0.99


def test_int8_prompts_are_weight_only(golden_codegeex_dir):
    """CodeGeeX's int8 prompt GEMMs keep the activations fp32 (rounding them to u8 as CodeGen's
    prompts do flipped 1.2% of the trained model's predictions): a 32-token prompt gives the plain
    int8 model's logits, whose Linears are weight-only."""
    from codegen.inference.quantize import quantize_linears
    ids = np.random.default_rng(0).integers(0, 1024, size=(1, 32))
    plain_int8 = quantize_linears(load_model(golden_codegeex_dir), "int8")
    np.testing.assert_allclose(logits(load_for_inference(golden_codegeex_dir, quantize="int8"), ids),
                               logits(plain_int8, ids), atol=1e-4, rtol=0)


def test_fused_int8_is_the_plain_int8_model(golden_codegeex_dir):
    """Same int8 weights, same arithmetic up to the activations' rounding: the kernels add no error
    of their own beyond it (the plain int8 Linears keep activations fp32)."""
    from codegen.inference.quantize import quantize_linears
    plain_int8 = quantize_linears(load_model(golden_codegeex_dir), "int8")
    fused = load_for_inference(golden_codegeex_dir, quantize="int8")
    ids = REFERENCE["input_ids"][:1, :8]  # a decode-sized step: int16 activations, 2^-16 of their range
    np.testing.assert_allclose(logits(fused, ids), logits(plain_int8, ids), atol=2e-3, rtol=0)

"""CodeGeeX on the fused CPU kernels (`FastCodeGeeXForCausalLM`) against the plain Paddle model and
THUDM's reference outputs, in fp32 and in the narrow weight formats.

The first use of the kernels may compile them (~20 s, then cached under $CODEGEN_HOME/kernels).
"""
from pathlib import Path

import numpy as np
import pytest

from codegen.checkpoints import load_model
from codegen.inference import load_for_inference
from codegen.inference.fast import make_fast
from codegen.inference.fast_codegeex import FastCodeGeeXForCausalLM
from codegen.inference.quantize import WeightOnlyLinear
from conftest import codegeex_greedy as greedy, codegeex_logits as logits, copy_model, needs_kernels

FIXTURES = Path(__file__).parent / "fixtures" / "codegeex"
REFERENCE = np.load(FIXTURES / "codegeex-tiny-a.npz")
FORMATS = ["int8", "fp16", "bf16"]

pytestmark = needs_kernels


# ---- fp32: the plain path's and the reference's numbers ------------------------------------

def test_the_loader_puts_codegeex_on_the_fused_kernels_with_qkv_packed(fused_golden_codegeex):
    # 3 standard layers and the top-query layer: Q, K and V one weight each, read in one pass
    model = fused_golden_codegeex.model
    packed = [layer.attention.qkv for layer in [*model.layers, model.top_query_layer]]
    assert len(packed) == 4 and all(isinstance(qkv, WeightOnlyLinear) and qkv.weight.shape == [192, 64]
                                    for qkv in packed)
    assert not hasattr(model.layers[0].attention, "query")


def test_fp32_logits_match_the_plain_path_and_the_reference(fused_golden_codegeex, golden_codegeex):
    ids = REFERENCE["input_ids"]  # 2 x 16 tokens: the prompt GEMMs
    ours = logits(fused_golden_codegeex, ids)
    assert np.abs(ours - REFERENCE["logits"]).max() <= 1e-4
    np.testing.assert_allclose(ours, logits(golden_codegeex, ids), atol=1e-5, rtol=0)
    # one row of 16 tokens: the matrix-vector kernels
    np.testing.assert_allclose(logits(fused_golden_codegeex, ids[:1]), REFERENCE["logits"][:1], atol=1e-4, rtol=0)


def test_fp32_greedy_tokens_equal_the_reference_and_the_plain_path(fused_golden_codegeex, golden_codegeex):
    prompt = REFERENCE["greedy_prompt"].tolist()
    expected = REFERENCE["greedy_new_ids"][0].tolist()
    assert greedy(fused_golden_codegeex, prompt, len(expected)) == expected
    assert greedy(fused_golden_codegeex, prompt, 40) == greedy(golden_codegeex, prompt, 40)


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


def test_steps_past_the_context_or_the_cache_are_refused(fused_golden_codegeex):
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        logits(fused_golden_codegeex, np.zeros((1, 65), dtype=np.int64))
    cache = fused_golden_codegeex.new_cache(1, max_length=4)
    logits(fused_golden_codegeex, [[1, 2, 3]], cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 4 positions; this step needs 5"):
        logits(fused_golden_codegeex, [[1, 2]], cache=cache)
    with pytest.raises(ValueError, match="attention_mask covers 3 positions"):
        logits(fused_golden_codegeex, [[1]], np.ones((1, 3)), fused_golden_codegeex.new_cache(1, max_length=8))


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
    fast = make_fast(copy_model(model), dtype)
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

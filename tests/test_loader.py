"""The inference loader: which path each checkpoint, device and flag takes (GPU included, decided
without one), and pre-quantized / fp16 / bf16 checkpoints from `codegen convert`.

The fused path may compile the CPU kernels on first use (~20 s, then cached).
"""
import json
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import needs_kernels

from codegen.checkpoints import (CONFIG_FILE, WEIGHTS_FILE, SafetensorsFile, convert, load_model, read_config,
                                 save_model)
from codegen.inference import decide, load_for_inference
from codegen.inference.fast import FP16GPUAttention, FastCodeGenForCausalLM, make_fast
from codegen.inference.loader import Plan, load_planned
from codegen.inference.quantize import WeightOnlyLinear, quantize_linears
from codegen.models import CodeGeeXConfig, CodeGeeXForCausalLM, CodeGenConfig, CodeGenForCausalLM

FIXTURES = Path(__file__).parent / "fixtures"
IDS = paddle.to_tensor(np.random.default_rng(0).integers(0, 128, size=(2, 12)), dtype="int64")


def small(model_type: str, directory: Path) -> Path:
    paddle.seed(0)
    if model_type == "codegen":
        model = CodeGenForCausalLM(CodeGenConfig(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                                 rotary_dim=8))
    else:
        model = CodeGeeXForCausalLM(CodeGeeXConfig(hidden_size=64, num_layers=3, num_attention_heads=4,
                                                   padded_vocab_size=128, max_position_embeddings=32))
    return save_model(model, directory)


def logits(model) -> np.ndarray:
    with paddle.no_grad():
        return model(IDS).numpy()


# ---- the decision -------------------------------------------------------------------------

def never(): raise AssertionError("the kernels were asked for off the fused CPU path")  # noqa: E704


@pytest.mark.parametrize("model_type, stored, device, flags, expected", [
    # CPU, CodeGen: the fused kernels in the format asked for, else the one stored; the LM head
    # int8 or fp32 as the blocks, else fp16 (decoding reads it every token)
    ("codegen", "float32", "cpu", {}, Plan("fused-cpu", "cpu", "float32", "float32")),
    ("codegen", "float32", "cpu", {"quantize": "int8"}, Plan("fused-cpu", "cpu", "int8", "int8")),
    ("codegen", "float32", "cpu", {"use_fp16_decoding": True}, Plan("fused-cpu", "cpu", "float16", "float16")),
    ("codegen", "bfloat16", "cpu", {}, Plan("fused-cpu", "cpu", "bfloat16", "float16")),
    ("codegen", "int8", "cpu", {}, Plan("fused-cpu", "cpu", "int8", "int8")),
    ("codegen", "float16", "cpu", {"quantize": "int8"}, Plan("fused-cpu", "cpu", "int8", "int8")),
    ("codegen", "float32", "cpu", {"use_fast": False}, Plan("plain", "cpu", None, None)),
    ("codegen", "float32", "cpu", {"use_fast": False, "quantize": "int8"}, Plan("plain", "cpu", "int8", None)),
    # CodeGeeX likewise; its output projection is the fp32 word embeddings, no head of its own
    ("codegeex", "float32", "cpu", {}, Plan("fused-cpu", "cpu", "float32", None)),
    ("codegeex", "float32", "cpu", {"quantize": "int8"}, Plan("fused-cpu", "cpu", "int8", None)),
    ("codegeex", "float32", "cpu", {"use_fp16_decoding": True}, Plan("fused-cpu", "cpu", "float16", None)),
    ("codegeex", "bfloat16", "cpu", {}, Plan("fused-cpu", "cpu", "bfloat16", None)),
    ("codegeex", "int8", "cpu", {}, Plan("fused-cpu", "cpu", "int8", None)),
    ("codegeex", "float32", "cpu", {"use_fast": False, "quantize": "int8"}, Plan("plain", "cpu", "int8", None)),
    # GPU: the whole model in the format asked for, straight onto the device; int8 weight-only
    ("codegen", "float32", "gpu", {}, Plan("gpu", "gpu", None, None, "float32")),
    ("codegen", "float32", "gpu:1", {"use_fp16_decoding": True}, Plan("gpu", "gpu:1", None, None, "float16")),
    ("codegen", "float16", "gpu", {}, Plan("gpu", "gpu", None, None, "float16")),
    ("codegeex", "float32", "gpu", {"use_fp16_decoding": True}, Plan("gpu", "gpu", None, None, "float16")),
    ("codegeex", "bfloat16", "gpu", {}, Plan("gpu", "gpu", None, None, "bfloat16")),
    ("codegeex", "float32", "gpu", {"quantize": "int8"}, Plan("plain", "gpu", "int8", None)),
    ("codegen", "int8", "gpu", {"use_fast": True}, Plan("plain", "gpu", "int8", None)),
])
def test_the_path_each_checkpoint_device_and_flag_takes(model_type, stored, device, flags, expected):
    fused = expected.path == "fused-cpu"
    assert decide(model_type, stored, device, **flags, have_kernels=(lambda: True) if fused else never) == expected


def test_without_the_kernels_codegen_takes_the_plain_path_in_the_same_format():
    plan = decide("codegen", "float32", "cpu", quantize="int8", have_kernels=lambda: False)
    assert plan == Plan("plain", "cpu", "int8", None)


def test_flags_that_cannot_be_honoured_say_so():
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        decide("codegen", "float32", "cpu", quantize="int4")
    # an int8 checkpoint stays int8: fp16 from it would only be int8's precision
    with pytest.warns(UserWarning, match="use_fp16_decoding asks for fp16 weights but the checkpoint holds int8"):
        plan = decide("codegen", "int8", "cpu", use_fp16_decoding=True, have_kernels=lambda: True)
    assert plan.linears == "int8"


# ---- loading in each plan ---------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["codegen", "codegeex"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_gpu_plan_reads_every_weight_straight_into_half_precision(tmp_path, model_type, dtype):
    # run here on CPU, where Paddle has no fp16 kernels: the weights are checked, then run in fp32
    directory = small(model_type, tmp_path / "m")
    reference = load_model(directory)
    model = load_planned(directory, read_config(directory), Plan("gpu", "cpu", None, None, dtype))
    assert {str(p.dtype) for p in model.parameters()} == {f"paddle.{dtype}"}
    if model_type == "codegen":
        assert all(isinstance(block.attn, FP16GPUAttention) for block in model.transformer.h)
        assert model.rotary_sin.dtype == paddle.float32
    for (name, half), full in zip(model.state_dict().items(), reference.state_dict().values()):
        np.testing.assert_array_equal(half.astype("float32").numpy(), full.astype(dtype).astype("float32").numpy(),
                                      err_msg=name)
    model.to(dtype="float32")
    np.testing.assert_allclose(logits(model), logits(reference), atol=0.05 if dtype == "bfloat16" else 0.01)


@pytest.mark.parametrize("model_type", ["codegen", "codegeex"])
def test_fp16_decoding_covers_codegeex_on_cpu(tmp_path, model_type):
    directory = small(model_type, tmp_path / "m")
    model = load_for_inference(directory, use_fp16_decoding=True, use_fast=False)
    linears = [layer for layer in model.sublayers() if isinstance(layer, WeightOnlyLinear)]
    assert linears and {layer.weight.dtype for layer in linears} == {paddle.float16}
    np.testing.assert_allclose(logits(model), logits(load_model(directory)), atol=0.01)


# ---- pre-quantized checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module")
def codegen_dirs(tmp_path_factory):
    """The tiny Hugging Face CodeGen converted as it is and with --quantize int8, from the source and
    from our own converted directory (a user's second step)."""
    root = tmp_path_factory.mktemp("prequantized")
    ours = convert(FIXTURES / "hf-codegen-tiny", root / "fp32")
    return ours, convert(FIXTURES / "hf-codegen-tiny", root / "int8", quantize="int8"), \
        convert(ours, root / "int8-from-ours", quantize="int8")


def test_an_int8_checkpoint_holds_int8_rows_and_their_scales(codegen_dirs):
    _, int8, _ = codegen_dirs
    assert json.loads((int8 / CONFIG_FILE).read_text())["weight_format"] == "int8"
    weights = SafetensorsFile(int8 / WEIGHTS_FILE)
    name = "transformer.h.0.mlp.fc_in"
    fan_in, fan_out = load_model(codegen_dirs[0]).transformer.h[0].mlp.fc_in.weight.shape
    assert weights.dtype(f"{name}.weight") == "I8" and weights.shape(f"{name}.weight") == (fan_out, fan_in)
    assert weights.dtype(f"{name}.weight_scale") == "F32" and weights.shape(f"{name}.weight_scale") == (fan_out,)
    # the head keeps the source's dtype (fp16 here): the plain path keeps it float
    assert weights.dtype("lm_head.weight") == "F16" and "lm_head.weight_scale" not in weights.names
    assert (int8 / WEIGHTS_FILE).stat().st_size < (codegen_dirs[0] / WEIGHTS_FILE).stat().st_size


@pytest.mark.parametrize("use_fast", [pytest.param(None, marks=needs_kernels), False])
def test_an_int8_checkpoint_gives_the_logits_of_quantizing_at_load_time(codegen_dirs, use_fast, monkeypatch):
    ours, int8, int8_from_ours = codegen_dirs
    at_load = logits(load_for_inference(ours, quantize="int8", use_fast=use_fast))
    # loading the converted rows quantizes no transformer Linear; the head, kept float on disk for the
    # plain path, the fused path quantizes as quantizing at load time does
    import codegen.inference.loader as loader
    pack = loader.pack_linear
    head_shape = tuple(load_model(ours).lm_head.weight.shape)
    monkeypatch.setattr(loader, "pack_linear", lambda read, shape, fmt, scale=None:
                        pytest.fail("quantized while loading") if fmt == "int8" and tuple(shape) != head_shape
                        else pack(read, shape, fmt, scale))
    for directory in (int8, int8_from_ours):
        model = load_for_inference(directory, use_fast=use_fast)
        assert isinstance(model, FastCodeGenForCausalLM) == (use_fast is None)
        if use_fast is None:
            assert model.model.lm_head.weight.dtype == paddle.int8
        np.testing.assert_array_equal(logits(model), at_load)


def test_a_codegeex_int8_checkpoint_gives_the_logits_of_quantizing_at_load_time(tmp_path):
    source = FIXTURES / "codegeex" / "codegeex-tiny-a.pt"
    config = FIXTURES / "codegeex" / "codegeex-tiny-a.json"
    ours = convert(source, tmp_path / "fp32", config_path=config)
    int8 = convert(source, tmp_path / "int8", config_path=config, quantize="int8")
    expected = logits(make_fast(load_model(ours), "int8"))  # fused
    np.testing.assert_array_equal(logits(load_for_inference(int8)), expected)
    np.testing.assert_array_equal(logits(load_for_inference(ours, quantize="int8")), expected)
    plain = logits(quantize_linears(load_model(ours), "int8"))
    np.testing.assert_array_equal(logits(load_for_inference(int8, use_fast=False)), plain)


@needs_kernels
def test_int8_at_load_matches_the_kernels_own_packing(codegen_dirs):
    ours = codegen_dirs[0]
    np.testing.assert_array_equal(logits(load_for_inference(ours, quantize="int8")),
                                  logits(make_fast(load_model(ours), "int8")))


@pytest.mark.parametrize("dtype, stored, tolerance", [("fp16", "F16", 0.01), ("bf16", "BF16", 0.1),
                                                      ("fp32", "F32", 0)])
def test_dtype_checkpoints_store_and_load_that_format(codegen_dirs, tmp_path, dtype, stored, tolerance):
    directory = convert(codegen_dirs[0], tmp_path / dtype, dtype=dtype)
    weights = SafetensorsFile(directory / WEIGHTS_FILE)
    assert {weights.dtype(name) for name in weights.names} == {stored}
    fmt = read_config(directory)["weight_format"]
    assert fmt == {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[dtype]
    model = load_for_inference(directory, use_fast=False)
    linears = [layer for layer in model.sublayers() if isinstance(layer, WeightOnlyLinear)]
    assert {str(layer.weight.dtype) for layer in linears} == (set() if dtype == "fp32" else {f"paddle.{fmt}"})
    np.testing.assert_allclose(logits(model), logits(load_model(codegen_dirs[0])), atol=tolerance + 1e-6)


def test_what_cannot_be_converted_or_loaded_says_why(codegen_dirs, tmp_path):
    ours, int8, _ = codegen_dirs
    with pytest.raises(ValueError, match="already in codegen's format .give --quantize int8 or --dtype"):
        convert(ours, tmp_path / "again")
    with pytest.raises(ValueError, match="already holds int8 weights"):
        convert(int8, tmp_path / "twice", quantize="int8")
    with pytest.raises(ValueError, match="not both"):
        convert(ours, tmp_path / "both", quantize="int8", dtype="fp16")
    with pytest.raises(ValueError, match="holds int8 weights .* train from the float checkpoint"):
        load_model(int8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_for_inference(int8, use_fast=False)  # int8 as stored, nothing to warn about

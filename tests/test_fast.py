"""The fast CPU path: weight-only Linears, the fused decode operator, the flags.

The first use of the kernels may compile them (~20 s, then cached under
$CODEGEN_HOME/kernels).
"""
import ctypes.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import REPO, copy_model, needs_kernels, small_model

from codegen import kernels
from codegen.models.codegen import CodeGenForCausalLM
from codegen.checkpoints import load_model, save_model
from codegen.inference import load_for_inference
from codegen.inference.fast import FastCodeGenForCausalLM, make_fast, use_fp16_gpu_attention
from codegen.inference.quantize import WeightOnlyLinear, quantize_linears

def dequantized(layer: WeightOnlyLinear) -> np.ndarray:
    """The stored weight as float32 [out, in], decoded with numpy (not with our kernels)."""
    w = layer.weight
    if w.dtype == paddle.bfloat16:
        bits = w.view(paddle.uint16).numpy().astype(np.uint32) << 16
        return bits.view(np.float32)
    if w.dtype == paddle.float16:
        return w.view(paddle.uint16).numpy().view(np.float16).astype(np.float32)
    values = w.numpy().astype(np.float32)
    return values * layer.weight_scale.numpy()[:, None] if w.dtype == paddle.int8 else values


@pytest.fixture
def prefill_kernels():
    """The kernels, with the reduced-precision GEMMs back on after the test."""
    loaded = kernels.load()
    yield loaded
    loaded.use_reduced_precision_prefill(True)


# prompt passes of odd and even lengths, alone and after cached tokens (a verify pass of many
# drafts, a prompt fed in chunks): the kernels' scratch rows of bf16 are padded to pairs
BUFFERS_SCRIPT = """
import sys
import numpy as np
import paddle
paddle.disable_signal_handler()   # glibc's abort must end the process, not hang in Paddle's handler
from conftest import small_model
from codegen.inference.fast import make_fast
model = make_fast(small_model(), sys.argv[1])
for n in (17, 18, 31, 33, 40, 41):
    ids = paddle.to_tensor(np.arange(n)[None] % 500 + 3, dtype="int64")
    cache = model.new_cache(1, 64)
    with paddle.no_grad():
        model(ids, None, cache)
        model(ids[:, :17], None, cache)
print("done")
"""


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_prompt_passes_write_only_inside_their_buffers(dtype):
    """Under glibc's checking allocator, which aborts when a freed block was written past its end."""
    if ctypes.util.find_library("c_malloc_debug") is None:
        pytest.skip("glibc's libc_malloc_debug (glibc 2.34+) is not installed")
    env = {**os.environ, "LD_PRELOAD": "libc_malloc_debug.so.0", "MALLOC_CHECK_": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", BUFFERS_SCRIPT, dtype], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("done"), done.stderr[-3000:]


@needs_kernels
def test_the_kernels_build_and_load_here():
    assert kernels.load() is not None


# ---- WeightOnlyLinear ------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16", "fp16", "fp32"])
@pytest.mark.parametrize("rows", [1, 3, 43])  # 1 and 3 take the matrix-vector kernel, 43 the GEMM
def test_weight_only_linear_computes_with_its_stored_weights(dtype, rows):
    paddle.seed(1)
    linear = paddle.nn.Linear(200, 75)  # 200 is not a multiple of the vector width: tails run too
    layer = WeightOnlyLinear.from_linear(linear, dtype)
    x = paddle.randn([rows, 200])
    expected = x.numpy() @ dequantized(layer).T + linear.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", [("bf16", 2**-8), ("fp16", 2**-10), ("fp32", 0)])
def test_float_formats_round_each_weight_to_nearest(dtype, tolerance):
    linear = paddle.nn.Linear(64, 32)
    w = linear.weight.numpy().T
    stored = dequantized(WeightOnlyLinear.from_linear(linear, dtype))
    # fp16 keeps a fixed absolute step (2^-24) below 2^-14: subnormals
    assert np.all(np.abs(stored - w) <= tolerance * np.abs(w) + 2.0**-25)


# ---- the prefill GEMMs ------------------------------------------------------------------------
# Over 16 activation rows a prompt's Linears run the GEMM: for int8 weights the u8 x s8 kernel
# (AMX tiles, else AVX512-VNNI), for bf16/fp16 weights the bf16 one (AMX, else AVX512-BF16) where
# the CPU has them, else the fp32 one. Each is checked against numpy doing the same arithmetic.

INT8_KERNELS = ("int8-amx", "int8-vnni")  # u8 activations x s8 weights, the same arithmetic
BF16_KERNELS = ("bf16-amx", "bf16")

@needs_kernels
def test_a_linear_alone_keeps_its_activations_fp32():
    # weight-only, as CodeGeeX's int8 promises: the prompt GEMMs' activation rounding is opt-in
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(300, 70, bias_attr=False), "int8")
    x = paddle.randn([40, 300])
    np.testing.assert_allclose(layer(x).numpy(), x.numpy() @ dequantized(layer).T, rtol=1e-4, atol=1e-4)
    if kernels.load().prefill_kernels()["int8"] in INT8_KERNELS:
        assert np.abs(prompt_gemm(layer, x) - layer(x).numpy()).max() > 1e-3

def quantized_rows_u8(x: np.ndarray, group: int = 512) -> np.ndarray:
    """x as the int8 GEMM sees it: each row's runs of `group` columns on 256 levels from
    min(run, 0) to max(run, 0)."""
    out = np.empty_like(x)
    for k0 in range(0, x.shape[1], group):
        part = x[:, k0:k0 + group]
        lo, hi = np.minimum(part.min(1, keepdims=True), 0), np.maximum(part.max(1, keepdims=True), 0)
        scale = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
        zero = np.clip(np.round(-lo / scale), 0, 255)
        out[:, k0:k0 + group] = scale * (np.clip(np.round(part / scale + zero), 0, 255) - zero)
    return out


def rounded_to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16  # round to nearest even
    return bits.astype(np.uint32).view(np.float32)


def prompt_gemm(layer: WeightOnlyLinear, x) -> np.ndarray:
    """x @ the layer's weight^T through the GEMM a prompt takes in the decoder layer."""
    return kernels.load().weight_only_linear(x, layer.weight, layer.weight_scale, None,
                                             reduced_precision=True).numpy()


def gemm_reference(layer: WeightOnlyLinear, x: np.ndarray, kernel: str) -> np.ndarray:
    w = dequantized(layer)
    if kernel in INT8_KERNELS:
        x = quantized_rows_u8(x)
    elif kernel in BF16_KERNELS:
        x, w = rounded_to_bf16(x), rounded_to_bf16(w)  # fp16 weights meet bf16 activations as bf16
    return x.astype(np.float64) @ w.T.astype(np.float64)


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16", "fp16", "fp32"])
@pytest.mark.parametrize("rows,k,n", [(17, 1027, 33), (43, 200, 75), (64, 4099, 65), (100, 3, 7)])
def test_prefill_gemm_matches_numpy_doing_the_same_arithmetic(prefill_kernels, dtype, rows, k, n):
    # odd sizes everywhere: K not a multiple of 4, 16, or of the packed blocks (512/256); rows
    # not a multiple of the 8-row tile; outputs not a multiple of the 32-row panel
    paddle.seed(rows + k)
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(k, n, bias_attr=False), dtype)
    x = paddle.randn([rows, k]) * paddle.exp(paddle.randn([rows, 1]))  # rows of very different sizes
    x[:, 0] += 3.0  # a skewed range: the zero point is not in the middle
    kernel = prefill_kernels.prefill_kernels()[dtype]
    got = prompt_gemm(layer, x)
    expected = gemm_reference(layer, x.numpy(), kernel)
    # float sums in another order; a u8 code may round the other way at an exact half
    slack = np.abs(x.numpy()).max(1, keepdims=True) / 255 * np.abs(dequantized(layer)).max() * 2
    tolerance = 1e-5 * (np.abs(x.numpy()) @ np.abs(dequantized(layer)).T) + (slack if kernel in INT8_KERNELS else 0)
    assert np.all(np.abs(got - expected) <= tolerance + 1e-6), kernel


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16", "fp16"])
def test_the_fp32_prefill_gemm_is_the_fallback_for_every_format(prefill_kernels, dtype):
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(300, 70), dtype)
    x = paddle.randn([40, 300])
    prefill_kernels.use_reduced_precision_prefill(False)
    assert prefill_kernels.prefill_kernels()[dtype] == "fp32"
    got = prompt_gemm(layer, x)
    np.testing.assert_allclose(got, x.numpy() @ dequantized(layer).T, rtol=1e-4, atol=1e-4)


def test_the_reduced_precision_gemms_run_where_the_cpu_has_them():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    loaded = kernels.load()
    if loaded is None:
        pytest.skip("no kernels here")
    assert (loaded.prefill_kernels()["int8"] in INT8_KERNELS) == (" avx512_vnni" in flags)
    assert (loaded.prefill_kernels()["bf16"] in BF16_KERNELS) == (" avx512_bf16" in flags)
    # AMX also needs the OS's permission, which this test cannot see: where it is used, the CPU has it
    assert loaded.prefill_kernels()["int8"] != "int8-amx" or " amx_int8" in flags
    assert loaded.prefill_kernels()["bf16"] != "bf16-amx" or " amx_bf16" in flags


@pytest.fixture
def amx_prefill(prefill_kernels):
    """The kernels with the AMX GEMMs in use; skips where AMX is not usable."""
    if prefill_kernels is None or {prefill_kernels.prefill_kernels()[d] for d in ("int8", "bf16")} != {"int8-amx",
                                                                                                     "bf16-amx"}:
        pytest.skip("AMX is not usable here (no AMX-INT8/BF16 CPU, or the OS did not allow it)")
    return prefill_kernels


def test_amx_can_be_turned_off_alone(amx_prefill):
    prefill_kernels = amx_prefill
    prefill_kernels.use_reduced_precision_prefill(True, amx=False)
    assert prefill_kernels.prefill_kernels() == {"int8": "int8-vnni", "bf16": "bf16", "fp16": "bf16", "fp32": "fp32"}
    prefill_kernels.use_reduced_precision_prefill(True)
    assert prefill_kernels.prefill_kernels()["int8"] == "int8-amx"


@pytest.mark.parametrize("rows,k,n", [(17, 1027, 33), (43, 200, 75), (64, 4099, 65), (100, 3, 7), (33, 512, 16),
                                      (257, 576, 40)])
def test_amx_int8_gemm_is_bit_identical_to_the_vnni_one(amx_prefill, rows, k, n):
    # ragged everywhere: tokens not a multiple of the 16-row tile (or of 32, a step; 257 crosses
    # the 256-token pass), K not a multiple of 64 or of the 512-column runs, outputs not of 16 or 32.
    # The integer sums are exact and the epilogue is shared, so not one bit may differ.
    paddle.seed(rows * k)
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(k, n, bias_attr=False), "int8")
    x = paddle.randn([rows, k]) * paddle.exp(paddle.randn([rows, 1]))
    x[:, 0] += 3.0  # a zero point far from 128: its correction shows
    amx = prompt_gemm(layer, x)
    amx_prefill.use_reduced_precision_prefill(True, amx=False)
    np.testing.assert_array_equal(amx, prompt_gemm(layer, x))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("rows,k,n", [(17, 1027, 33), (100, 3, 7), (40, 300, 70)])
def test_amx_bf16_gemm_is_exact_where_the_sums_are(amx_prefill, dtype, rows, k, n):
    # small integers: every product and partial sum is exact in fp32, so whatever the order of the
    # tile's additions the result must equal numpy's exactly
    rng = np.random.default_rng(rows + k)
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(k, n, bias_attr=False), dtype)
    weight = rng.integers(-8, 9, size=(n, k)).astype(np.float32)
    layer.weight.set_value(paddle.to_tensor(weight).astype(layer.weight.dtype))
    x = rng.integers(-8, 9, size=(rows, k)).astype(np.float32)
    np.testing.assert_array_equal(prompt_gemm(layer, paddle.to_tensor(x)), x @ weight.T)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amx_bf16_gemm_stays_within_bf16_rounding_of_fp32(amx_prefill, dtype):
    # each activation and weight rounded to bf16 is off by at most 2^-9 relative: the product by 2^-8
    paddle.seed(5)
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(1100, 90, bias_attr=False), dtype)
    x = paddle.randn([70, 1100])
    w = dequantized(layer).astype(np.float64)
    exact = x.numpy().astype(np.float64) @ w.T
    bound = 2**-8 * (np.abs(x.numpy()) @ np.abs(w).T) + 1e-5
    assert np.all(np.abs(prompt_gemm(layer, x) - exact) <= bound)


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_prefill_gemm_extreme_and_constant_rows(prefill_kernels, dtype):
    k = 2 * 512 + 5
    weight = np.where(np.arange(3 * k).reshape(3, k) % 3 == 0, -1.0, 1.0).astype(np.float32)
    layer = WeightOnlyLinear.from_linear(paddle.nn.Linear(k, 3, bias_attr=False), dtype)
    layer.weight.set_value(paddle.to_tensor(127 * weight).astype(layer.weight.dtype))
    if dtype == "int8":
        layer.weight_scale.set_value(paddle.full([3], 0.5))
    rows = np.stack([np.full(k, 1e4), np.zeros(k), np.full(k, -3.0), np.where(np.arange(k) % 2, 1e4, -1e4)] * 5)
    rows = rows.astype(np.float32)  # all-zero and constant rows, every activation at its row's extreme
    got = prompt_gemm(layer, paddle.to_tensor(rows))
    w = dequantized(layer).astype(np.float64)
    exact = rows.astype(np.float64) @ w.T
    # each activation is off by at most one u8 level (int8) or half a bf16 step (2^-8 relative)
    level = (np.maximum(rows.max(1), 0) - np.minimum(rows.min(1), 0))[:, None] / 255 if dtype == "int8" else 0
    tolerance = level * np.abs(w).sum(1) + 2**-8 * (np.abs(rows) @ np.abs(w).T) * (dtype == "bf16")
    assert np.all(np.abs(got - exact) <= tolerance + 1e-6 * np.abs(exact))
    np.testing.assert_array_equal(got[1::4], 0)  # the all-zero rows
    np.testing.assert_allclose(got[2::4], exact[2::4], rtol=1e-6)  # a constant row is exact


def test_int8_uses_symmetric_absmax_scales_per_output_row():
    linear = paddle.nn.Linear(64, 32)
    layer = WeightOnlyLinear.from_linear(linear, "int8")
    w = linear.weight.numpy().T  # [out, in]
    np.testing.assert_allclose(layer.weight_scale.numpy(), np.abs(w).max(axis=1) / 127, rtol=1e-6)
    assert np.all(np.abs(layer.weight.numpy()).max(axis=1) == 127)
    assert np.all(np.abs(dequantized(layer) - w) <= layer.weight_scale.numpy()[:, None] / 2 + 1e-7)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 4])
def test_int8_matvec_long_rows_of_extreme_values_do_not_overflow(rows):
    # int8 weights meet int16-rounded activations in int32 sums: with every weight at +-127 and
    # every activation at its row's maximum, 12,325 columns would overflow one int32 lane
    k = 3 * 4096 + 37
    weight = np.where(np.arange(2 * k).reshape(2, k) % 3 == 0, -1.0, 1.0).astype(np.float32)
    layer = WeightOnlyLinear(paddle.to_tensor((127 * weight).astype(np.int8)), paddle.full([2], 0.5))
    x = np.tile(np.where(np.arange(k) % 3 == 0, -2.0, 2.0).astype(np.float32), (rows, 1))
    expected = x @ (0.5 * 127 * weight).T
    np.testing.assert_allclose(layer(paddle.to_tensor(x)).numpy(), expected, rtol=1e-5)


def test_int8_weights_take_about_a_quarter_of_fp32_memory():
    linear = paddle.nn.Linear(1024, 1024)
    layer = WeightOnlyLinear.from_linear(linear, "int8")
    nbytes = lambda ts: sum(t.numel().item() * t.element_size() for t in ts if t is not None)
    ratio = nbytes([layer.weight, layer.weight_scale, layer.bias]) / nbytes([linear.weight, linear.bias])
    assert ratio < 0.26


def test_quantize_linears_swaps_the_transformer_linears_and_skips_what_it_is_told():
    model = quantize_linears(small_model(), "int8", skip=["lm_head"])
    swapped = [name for name, layer in model.named_sublayers() if isinstance(layer, WeightOnlyLinear)]
    assert len(swapped) == 4 * model.config.n_layer
    assert isinstance(model.lm_head, paddle.nn.Linear)
    assert model.transformer.wte.weight.dtype == paddle.float32
    assert model.transformer.h[0].ln_1.weight.dtype == paddle.float32


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="weight dtype"):
        WeightOnlyLinear.from_linear(paddle.nn.Linear(4, 4), "int4")
    with pytest.raises(ValueError, match="features"):
        WeightOnlyLinear.from_linear(paddle.nn.Linear(4, 4), "int8")(paddle.ones([1, 5]))
    with pytest.raises(ValueError, match="CodeGenForCausalLM"):
        make_fast(paddle.nn.Linear(4, 4))


# ---- the fused model -----------------------------------------------------------------

def padded_batch():
    ids = paddle.to_tensor([[5, 17, 300, 2, 9, 11, 40, 41, 42, 43, 44, 45, 46],
                            [0, 0, 0, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], dtype="int64")
    mask = paddle.to_tensor([[1] * 13, [0, 0, 0] + [1] * 10], dtype="int64")
    return ids, mask


@needs_kernels
def test_fp32_fast_logits_match_the_plain_model_with_padding_and_cache():
    plain = small_model()
    fast = make_fast(copy_model(plain), "fp32")
    assert isinstance(fast, FastCodeGenForCausalLM)
    ids, mask = padded_batch()
    plain_cache, fast_cache = plain.new_cache(2, 32), fast.new_cache(2, 32)
    with paddle.no_grad():
        # a prefill long enough for the matmul path, a fused single-token step, a fused 3-token step
        for start, end in [(0, 9), (9, 10), (10, 13)]:
            a = plain(ids[:, start:end], mask[:, :end], plain_cache)
            b = fast(ids[:, start:end], mask[:, :end], fast_cache)
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    assert fast_cache.length == plain_cache.length == 13
    np.testing.assert_allclose(fast_cache.keys[1].numpy(), plain_cache.keys[1].numpy(), atol=1e-5)


@needs_kernels
def test_decode_attention_with_scores_far_from_zero_matches_the_plain_model():
    """Sharpened attention (queries and keys x 20): a softmax shifted by anything but the largest
    visible score overflows. Rows without padding take their maximum in vectors, whole and tail."""
    plain = small_model()
    with paddle.no_grad():
        for block in plain.transformer.h:
            block.attn.qkv_proj.weight.set_value(block.attn.qkv_proj.weight * 20)
    fast = make_fast(copy_model(plain), "fp32")
    ids = paddle.to_tensor([np.arange(24) * 37 % 500 + 3], dtype="int64")
    plain_cache, fast_cache = plain.new_cache(1, 24), fast.new_cache(1, 24)
    with paddle.no_grad():
        for start, end in [(0, 17)] + [(n, n + 1) for n in range(17, 24)]:
            a = plain(ids[:, start:end], None, plain_cache)
            b = fast(ids[:, start:end], None, fast_cache)
            assert np.isfinite(b.numpy()).all()
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-3)


def greedy(model, ids, mask, new_tokens):
    cache = model.new_cache(ids.shape[0], ids.shape[1] + new_tokens)
    out = []
    with paddle.no_grad():
        logits = model(ids, mask, cache)
        for _ in range(new_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token.numpy()[:, 0].tolist())
            mask = paddle.concat([mask, paddle.ones_like(token)], axis=1)
            logits = model(token, mask, cache)
    return out


@needs_kernels
def test_fp32_fast_greedy_tokens_equal_the_plain_path():
    plain = small_model(seed=3)
    fast = make_fast(copy_model(plain), "fp32")
    ids, mask = padded_batch()
    assert greedy(fast, ids, mask, 24) == greedy(plain, ids, mask, 24)


@needs_kernels
def test_the_fast_model_follows_the_cache_protocol():
    plain = small_model()
    fast = make_fast(copy_model(plain), "fp32")
    ids, mask = padded_batch()
    results = []
    for model in (plain, fast):
        cache = model.new_cache(2, 16)
        with paddle.no_grad():
            model(ids[:, :5], mask[:, :5], cache)
            cache.reorder(paddle.to_tensor([1, 0]))
            cache.truncate(4)
            swapped = paddle.to_tensor([mask.numpy()[1, :5], mask.numpy()[0, :5]])
            results.append(model(ids[::-1, 4:5], swapped, cache).numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-4)


@needs_kernels
def test_steps_past_the_context_or_the_cache_are_refused():
    fast = make_fast(small_model(n_positions=8), "int8")
    cache = fast.new_cache(1, 8)
    with paddle.no_grad():
        fast(paddle.ones([1, 8], dtype="int64"), None, cache)
        with pytest.raises(ValueError, match="context"):
            fast(paddle.ones([1, 1], dtype="int64"), None, cache)
        with pytest.raises(ValueError, match="attention_mask"):
            fast(paddle.ones([1, 1], dtype="int64"), paddle.ones([1, 3], dtype="int64"), fast.new_cache(1, 8))


def trained_code_model():
    """A tiny CodeGen trained briefly on real code, so its predictions are peaked like a
    trained model's (random weights give near-uniform logits, where any noise flips the top-1).

    Tokens are the real tokenizer's, renumbered into a compact vocabulary to keep training fast.
    """
    from codegen.tokenizer import codegen_tokenizer
    tokenizer = codegen_tokenizer()
    train = tokenizer.encode((REPO / "codegen" / "models" / "codegen.py").read_text())[:384]
    held_out = tokenizer.encode((REPO / "codegen" / "models" / "cache.py").read_text())[:1000]
    vocab = {token: i + 1 for i, token in enumerate(dict.fromkeys(train))}  # 0: not seen in training
    model = small_model(seed=0, vocab_size=len(vocab) + 1, n_positions=1024)
    model.train()
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    ids = paddle.to_tensor([[vocab[t] for t in train]], dtype="int64")
    for _ in range(40):
        logits = model(ids[:, :-1])
        loss = paddle.nn.functional.cross_entropy(logits.reshape([-1, logits.shape[-1]]), ids[:, 1:].reshape([-1]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model, [vocab.get(t, 0) for t in held_out]


@pytest.fixture(scope="module")
def trained():
    return trained_code_model()


@needs_kernels
def test_low_precision_decoding_agrees_with_fp32_teacher_forced(trained):
    model, tokens = trained
    tokens = tokens[:301]  # one token a step: the first 300 positions keep it quick
    with paddle.no_grad():
        logits = model(paddle.to_tensor([tokens[:-1]], dtype="int64"))[0].numpy()
    reference = logits.argmax(-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    top1 = (probs.max(-1) / probs.sum(-1)).mean()
    assert top1 > 0.2, f"the model is not peaked enough for the test to mean anything ({top1:.2f})"
    for dtype in ("bf16", "fp16", "int8"):
        fast = make_fast(copy_model(model), dtype)
        cache = fast.new_cache(1, len(tokens))
        predicted = []
        with paddle.no_grad():
            for token in tokens[:-1]:
                predicted.append(int(fast(paddle.to_tensor([[token]], dtype="int64"), None, cache)[0, -1].argmax()))
        agreement = (np.array(predicted) == reference).mean()
        assert agreement >= 0.99, f"{dtype}: top-1 agrees with fp32 on {agreement:.3f} of positions"


@needs_kernels
def test_low_precision_prefill_agrees_with_fp32_teacher_forced(trained, prefill_kernels):
    # the whole held-out text (999 positions) in one forward: every Linear takes the int8 / bf16
    # GEMM. int8 adds 8-bit activations to 8-bit weights: the first 300 positions alone measured
    # 98.7% (4 flips of near ties), the 999 99.2%; weights-only int8 99.6% on both.
    model, tokens = trained
    ids = paddle.to_tensor([tokens[:-1]], dtype="int64")
    with paddle.no_grad():
        reference = model(ids)[0].numpy().argmax(-1)
    assert prefill_kernels.prefill_kernels()["int8"] in (*INT8_KERNELS, "fp32")
    for dtype in ("bf16", "fp16", "int8"):
        fast = make_fast(copy_model(model), dtype)
        with paddle.no_grad():
            predicted = fast(ids, None, fast.new_cache(1, len(tokens)))[0].numpy().argmax(-1)
        agreement = (predicted == reference).mean()
        assert agreement >= 0.99, f"{dtype}: top-1 agrees with fp32 on {agreement:.3f} of positions"


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16", "fp16"])
def test_reduced_precision_prefill_greedy_tokens_equal_the_fp32_prefill(trained, prefill_kernels, dtype):
    model, tokens = trained
    # two prompts long enough for the GEMMs, the second left-padded
    ids = paddle.to_tensor([tokens[:60], [0] * 14 + tokens[100:146]], dtype="int64")
    mask = paddle.to_tensor([[1] * 60, [0] * 14 + [1] * 46], dtype="int64")
    fast = make_fast(copy_model(model), dtype)
    reduced = greedy(fast, ids, mask, 16)
    prefill_kernels.use_reduced_precision_prefill(False)
    assert greedy(fast, ids, mask, 16) == reduced


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_reduced_precision_prompt_attention_after_cached_tokens_agrees_with_fp32(trained, prefill_kernels, dtype):
    # beside reduced-precision weights a prompt's attention multiplies bf16 keys, values and
    # probabilities: a prompt after 37 cached tokens (an odd count of keys: a ragged last panel and
    # rows of values an odd number of bf16 apart), over more queries than one block (128)
    model, tokens = trained
    ids = paddle.to_tensor([tokens[:338]], dtype="int64")
    with paddle.no_grad():
        reference = model(ids)[0, 37:].numpy().argmax(-1)
    fast = make_fast(copy_model(model), dtype)
    cache = fast.new_cache(1, 338)
    with paddle.no_grad():
        fast(ids[:, :37], None, cache)
        predicted = fast(ids[:, 37:], None, cache)[0].numpy().argmax(-1)
    agreement = (predicted == reference).mean()
    assert agreement >= 0.99, f"{dtype}: top-1 agrees with fp32 on {agreement:.3f} of positions"


@needs_kernels
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_a_prompt_gives_the_same_logits_whatever_ran_before(dtype):
    # the GEMMs' activation copies are not zero-filled: the heap hands them what earlier, longer
    # or shorter, prompts left there, and none of it may reach the logits (ragged rows, padding rows)
    fast = make_fast(copy_model(small_model(seed=5, n_positions=512)), dtype)
    rng = np.random.default_rng(1)
    prompt = paddle.to_tensor(rng.integers(0, 512, size=(1, 150)), dtype="int64")
    logits = []
    for before in (300, 77):
        with paddle.no_grad():
            fast(paddle.to_tensor(rng.integers(0, 512, size=(2, before)), dtype="int64"), None,
                 fast.new_cache(2, before))
            logits.append(fast(prompt, None, fast.new_cache(1, 150)).numpy())
    np.testing.assert_array_equal(*logits)


def test_int8_amx_prefill_logits_equal_the_vnni_ones(trained, amx_prefill):
    # bit-identical GEMMs make the whole forward identical, padding and all. Only the int8 GEMMs
    # change kernel: attention's bf16 products stay on AMX (the AVX512-BF16 kernel does not round
    # its sums bit for bit as the tiles do)
    model, tokens = trained
    ids = paddle.to_tensor([tokens[:70], [0] * 14 + tokens[100:156]], dtype="int64")
    mask = paddle.to_tensor([[1] * 70, [0] * 14 + [1] * 56], dtype="int64")
    fast = make_fast(copy_model(model), "int8")
    logits = []
    for amx in (True, False):
        amx_prefill.use_reduced_precision_prefill(True, amx_int8=amx)
        with paddle.no_grad():
            logits.append(fast(ids, mask, fast.new_cache(2, 70)).numpy())
    np.testing.assert_array_equal(*logits)


@needs_kernels
def test_the_int8_head_gives_each_position_the_same_logits_in_a_step_of_one_or_many_tokens(trained):
    # what prompt lookup needs: verifying drafts (a few tokens a forward) chooses exactly as decoding
    # one token at a time, head included (int8 rows times int16 activations: exact integer dots)
    model, tokens = trained
    fast = make_fast(copy_model(model), "int8")
    assert fast.model.lm_head.weight.dtype == paddle.int8
    prompt, steps = paddle.to_tensor([tokens[:40]], dtype="int64"), tokens[40:52]
    one, many = fast.new_cache(1, 60), fast.new_cache(1, 60)
    with paddle.no_grad():
        fast(prompt, None, one)
        fast(prompt, None, many)
        singly = np.concatenate([fast(paddle.to_tensor([[t]], dtype="int64"), None, one).numpy() for t in steps], 1)
        together = fast(paddle.to_tensor([steps], dtype="int64"), None, many).numpy()
    np.testing.assert_array_equal(together, singly)


@needs_kernels
@pytest.mark.parametrize("past,seq", [(0, 300), (37, 200)])
def test_blocked_attention_over_long_prompts_matches_the_plain_model(past, seq):
    # more queries than one attention block (128), with and without cached keys before them
    plain = small_model(seed=4, n_positions=512)
    fast = make_fast(copy_model(plain), "fp32")
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, 512, size=(1, past + seq)), dtype="int64")
    caches = plain.new_cache(1, past + seq), fast.new_cache(1, past + seq)
    with paddle.no_grad():
        for model, cache in zip((plain, fast), caches):
            if past:
                model(ids[:, :past], None, cache)
        a = plain(ids[:, past:], None, caches[0])
        b = fast(ids[:, past:], None, caches[1])
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


# ---- flags, fp16, fallback, loading --------------------------------------------------------

@needs_kernels
def test_use_fp16_decoding_on_cpu_keeps_fp16_weights_and_fp32_logits(tmp_path):
    plain = small_model()
    fast = load_for_inference(save_model(plain, tmp_path / "model"), use_fp16_decoding=True)
    assert isinstance(fast, FastCodeGenForCausalLM)
    linears = [layer for layer in fast.sublayers() if isinstance(layer, WeightOnlyLinear)]
    assert linears and all(layer.weight.dtype == paddle.float16 for layer in linears)
    cache = fast.new_cache(2)
    assert cache.keys[0].dtype == paddle.float32
    ids, mask = padded_batch()
    with paddle.no_grad():
        logits = fast(ids, mask, cache)
        step = fast(ids[:, :1], paddle.concat([mask, mask[:, :1]], axis=1), cache)
    assert logits.dtype == paddle.float32 and logits.shape == [2, ids.shape[1], plain.config.vocab_size]
    assert step.shape == [2, 1, plain.config.vocab_size]


def test_load_for_inference_flags(tmp_path):
    directory = save_model(small_model(), tmp_path / "model")
    assert load_for_inference(directory, use_fast=False).__class__ is CodeGenForCausalLM
    plain_int8 = load_for_inference(directory, quantize="int8", use_fast=False)
    assert isinstance(plain_int8.transformer.h[0].mlp.fc_in, WeightOnlyLinear)
    assert isinstance(plain_int8.lm_head, paddle.nn.Linear)
    with pytest.raises(ValueError, match="quantize"):
        load_for_inference(directory, quantize="int4")


@needs_kernels
def test_fast_is_the_default(tmp_path):
    directory = save_model(small_model(), tmp_path / "model")
    assert isinstance(load_for_inference(directory), FastCodeGenForCausalLM)
    assert isinstance(load_for_inference(directory, use_fast=True), FastCodeGenForCausalLM)


def test_fused_attention_path_matches_the_plain_attention():
    # the GPU fp16 path's arithmetic, run on CPU in fp32 (SDPA falls back to its math kernel)
    plain = small_model()
    fused = use_fp16_gpu_attention(copy_model(plain), dtype="float32")
    ids, mask = padded_batch()
    caches = plain.new_cache(2, 16), fused.new_cache(2, 16)
    with paddle.no_grad():
        for start, end in [(0, 5), (5, 6)]:
            a = plain(ids[:, start:end], mask[:, :end], caches[0])
            b = fused(ids[:, start:end], mask[:, :end], caches[1])
            # padding query rows see nothing; both keep them finite but may differ there
            np.testing.assert_allclose(b.numpy()[0], a.numpy()[0], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(b.numpy()[1, -1], a.numpy()[1, -1], rtol=1e-4, atol=1e-4)


def test_fp16_gpu_path_casts_weights_but_keeps_rotary_tables_fp32():
    model = use_fp16_gpu_attention(small_model())
    assert model.transformer.h[0].attn.qkv_proj.weight.dtype == paddle.float16
    assert model.lm_head.weight.dtype == paddle.float16
    assert model.rotary_sin.dtype == paddle.float32
    assert model.new_cache(1, 4).keys[0].dtype == paddle.float16


def test_a_failed_build_falls_back_to_the_plain_path_with_one_warning(monkeypatch, tmp_path):
    def broken_build(root, name):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "build_dir", lambda: tmp_path)
    monkeypatch.setattr(kernels, "_build", broken_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.load() is None
        model = small_model()
        assert make_fast(model, "int8") is model
        directory = save_model(small_model(), tmp_path / "model")
        assert load_for_inference(directory, quantize="int8").__class__ is CodeGenForCausalLM
    assert len([w for w in caught if "fast CPU kernels are unavailable" in str(w.message)]) == 1


def converted_after_loading(directory, quantize=None, use_fp16_decoding=False, use_fast=None):
    """What loading straight into the final format must equal: the fp32 model, converted in memory
    by the kernels' own packing (make_fast) or by `quantize_linears`."""
    model = load_model(directory)
    fmt = "int8" if quantize else "fp16" if use_fp16_decoding else "fp32"
    if use_fast is False:
        return quantize_linears(model, fmt, skip=["lm_head"]) if fmt != "fp32" else model
    return make_fast(model, fmt)


@needs_kernels
@pytest.mark.parametrize("flags", [{}, {"quantize": "int8"}, {"use_fp16_decoding": True}, {"use_fast": False},
                                   {"quantize": "int8", "use_fast": False},
                                   {"use_fp16_decoding": True, "use_fast": False}])
def test_load_for_inference_reads_straight_into_what_converting_the_fp32_model_makes(tmp_path, flags):
    directory = save_model(small_model(), tmp_path / "model")
    loaded = load_for_inference(directory, **flags)
    converted = converted_after_loading(directory, **flags)
    assert type(loaded) is type(converted)
    assert isinstance(loaded, FastCodeGenForCausalLM) == (flags.get("use_fast") is not False)
    ids, mask = padded_batch()
    with paddle.no_grad():
        a = loaded(ids, mask, loaded.new_cache(2, 16))
        b = converted(ids, mask, converted.new_cache(2, 16))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="does not match"):
        load_for_inference(directory, **flags)


@pytest.mark.parametrize("env,expected", [({}, "1000"), ({"GOMP_SPINCOUNT": "50"}, "50"),
                                          ({"OMP_WAIT_POLICY": "active"}, None)])
def test_importing_codegen_bounds_how_long_openmp_threads_spin(env, expected):
    # libgomp reads it when `import paddle` loads it, so codegen must set it first
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import codegen, os, sys; sys.stdout.write(str(os.environ.get('GOMP_SPINCOUNT')))"
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, check=True)
    assert done.stdout == str(expected)

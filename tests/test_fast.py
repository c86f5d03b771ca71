"""The fast CPU path: weight-only Linears, the fused decode operator, the flags.

The first use of the kernels may compile them (~20 s, then cached under
$CODEGEN_HOME/kernels).
"""
import shutil
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest

from codegen import kernels
from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM
from codegen.checkpoints import load_model, save_model
from codegen.inference import load_for_inference
from codegen.inference.fast import FastCodeGenForCausalLM, make_fast, use_fp16_gpu_attention
from codegen.inference.quantize import WeightOnlyLinear, quantize_linears

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=512, n_positions=256, n_embd=128, n_layer=2, n_head=8, rotary_dim=8)

needs_kernels = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                   reason="no C++ compiler: the kernels cannot be built here")


def small_model(seed=0, **overrides) -> CodeGenForCausalLM:
    paddle.seed(seed)
    model = CodeGenForCausalLM(CodeGenConfig(**{**SMALL, **overrides}))
    model.eval()
    return model


def copy_of(model: CodeGenForCausalLM) -> CodeGenForCausalLM:
    clone = CodeGenForCausalLM(model.config)
    clone.set_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    clone.eval()
    return clone


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
    fast = make_fast(copy_of(plain), "fp32")
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
    fast = make_fast(copy_of(plain), "fp32")
    ids, mask = padded_batch()
    assert greedy(fast, ids, mask, 24) == greedy(plain, ids, mask, 24)


@needs_kernels
def test_the_fast_model_follows_the_cache_protocol():
    plain = small_model()
    fast = make_fast(copy_of(plain), "fp32")
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
    held_out = tokenizer.encode((REPO / "codegen" / "models" / "cache.py").read_text())[:301]
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


@needs_kernels
def test_low_precision_decoding_agrees_with_fp32_teacher_forced():
    model, tokens = trained_code_model()
    with paddle.no_grad():
        logits = model(paddle.to_tensor([tokens[:-1]], dtype="int64"))[0].numpy()
    reference = logits.argmax(-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    top1 = (probs.max(-1) / probs.sum(-1)).mean()
    assert top1 > 0.2, f"the model is not peaked enough for the test to mean anything ({top1:.2f})"
    for dtype in ("bf16", "fp16", "int8"):
        fast = make_fast(copy_of(model), dtype)
        cache = fast.new_cache(1, len(tokens))
        predicted = []
        with paddle.no_grad():
            for token in tokens[:-1]:
                predicted.append(int(fast(paddle.to_tensor([[token]], dtype="int64"), None, cache)[0, -1].argmax()))
        agreement = (np.array(predicted) == reference).mean()
        assert agreement >= 0.99, f"{dtype}: top-1 agrees with fp32 on {agreement:.3f} of positions"


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
    fused = use_fp16_gpu_attention(copy_of(plain), dtype="float32")
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

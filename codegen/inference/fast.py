"""The fast inference path for CodeGen (PaddleNLP's FasterGeneration, for Paddle 3).

On CPU, `make_fast(model, weight_dtype)` stores every transformer Linear as
int8 / bf16 / fp16 / fp32 [out, in] (`WeightOnlyLinear`) and decodes each new
token with one compiled operator per block (codegen/kernels): LayerNorm, the
QKV and fc_in projections read in one pass, rotary, the KV-cache write and
attention, then out_proj + fc_out + residual. Decoding is bound by reading the
weights, so narrower weights are proportionally faster. Prompts run through
the same operator, which switches to blocked GEMMs for many tokens (Paddle's
own CPU matmul is several times slower on them): int8 weights meet activations
quantised per token to u8 (AVX512-VNNI), bf16/fp16 weights meet bf16
activations (AVX512-BF16), where CPUID says the CPU has them; fp32 otherwise.
Attention over a prompt goes by blocks of queries through the fp32 GEMM.

On GPU, `use_fp16_decoding` instead runs the whole model in fp16 with Paddle's
fused scaled-dot-product attention (`use_fp16_gpu_attention`).

The returned model keeps the `model(input_ids, attention_mask, cache)` and
`new_cache` protocol of `CodeGenForCausalLM`, so generation drives it unchanged.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..models.cache import KVCache
from ..models.codegeex import CodeGeeXForCausalLM
from ..models.codegen import CodeGenAttention, CodeGenForCausalLM
from .quantize import WeightOnlyLinear, quantize_linears, weight_dtype_name

class FastCodeGenForCausalLM(nn.Layer):
    """A `CodeGenForCausalLM` whose Linears are `WeightOnlyLinear`s, with fused decoding.

    `model` is the converted model (kept as `self.model`); `kernels` the loaded
    `codegen.kernels.Kernels`.
    """

    def __init__(self, model: CodeGenForCausalLM, kernels):
        super().__init__()
        self.model = model
        self.config = model.config
        self._kernels = kernels
        self._block_weights = [kernels.block_weights(b.ln_1, b.attn.qkv_proj, b.attn.out_proj, b.mlp.fc_in, b.mlp.fc_out)
                               for b in model.transformer.h]

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype: str | None = None) -> KVCache:
        # the fused operator works on a float32 cache whatever the weights' format
        c = self.config
        return KVCache(c.n_layer, batch_size, self.model.transformer.h[0].attn.num_heads, max_length or c.n_positions,
                       c.head_dim, dtype or "float32")

    def forward(self, input_ids, attention_mask=None, cache: KVCache | None = None, last_only: bool = False):
        batch, seq = input_ids.shape
        if cache is None:  # the operator writes keys/values somewhere: a cache for this call
            cache = self.new_cache(batch, min(seq, self.config.n_positions))
        if cache.keys[0].dtype != paddle.float32 or not input_ids.place.is_cpu_place():
            return self.model(input_ids, attention_mask, cache, last_only=last_only)
        past = cache.length
        if attention_mask is not None and attention_mask.shape[1] != past + seq:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, "
                             f"expected cached {past} + new {seq}")
        if past + seq > self.config.n_positions:
            raise ValueError(f"sequence of {past + seq} tokens exceeds the model's context "
                             f"of {self.config.n_positions}")
        if past + seq > cache.max_length:
            raise ValueError(f"KV cache holds {cache.max_length} positions; this step needs {past + seq}")
        with paddle.no_grad():
            return self._fused_forward(input_ids, attention_mask, cache, last_only)

    def _fused_forward(self, input_ids, attention_mask, cache: KVCache, last_only: bool):
        c, model, kernels = self.config, self.model, self._kernels
        mask = attention_mask.astype("int64").contiguous() if attention_mask is not None else None
        x = model.transformer.wte(input_ids)
        sin, cos, past, eps = model.rotary_sin, model.rotary_cos, int(cache.length), float(c.layer_norm_epsilon)
        parallel, attn = model.parallel, model.transformer.h[0].attn
        for i, weights in enumerate(self._block_weights):
            # split over ranks, each returns its partial sum, rank 0's with the residual (and the
            # fc_out bias, which only rank 0 holds): the all-reduce adds x once
            x = kernels.decoder_layer(x, weights, cache.keys[i], cache.values[i], mask, sin, cos, past=past,
                                      num_heads=attn.num_heads, rotary_dim=c.rotary_dim, mp_num=attn.shards, eps=eps,
                                      residual=parallel.rank == 0)
            parallel.all_reduce(x)
        cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        return model.lm_head(model.transformer.ln_f(x)).astype("float32")


def lm_head_dtype(weight_dtype: str, head_dtype: str | None = None) -> str:
    """The format CodeGen's LM head is kept in beside transformer Linears of `weight_dtype`:
    `head_dtype` if given, else that of the Linears for fp32 and int8, fp16 for bf16 and fp16."""
    if head_dtype is not None:
        return weight_dtype_name(head_dtype)
    # Decoding reads every weight once a token: an fp32 head was 210 of an int8 model's 484 MB.
    # Its rounding reaches the logits directly, so it decides close calls: beside int8 blocks,
    # on four trained tiny models (2,400 teacher-forced decode steps), an int8 head kept 2,396
    # of the fp32 head's top-1s and an fp16 one 2,399. Beside bf16 blocks a bf16 head agreed with the
    # fp32 model on 98.7% of positions, an fp32 one on 99.7% (bf16 keeps an 8-bit mantissa).
    weight_dtype = weight_dtype_name(weight_dtype)
    return weight_dtype if weight_dtype in ("float32", "int8") else "float16"


def make_fast(model: CodeGenForCausalLM | CodeGeeXForCausalLM, weight_dtype: str = "fp32",
              head_dtype: str | None = None):
    """Convert `model` in place for fast CPU inference and wrap it.

    `weight_dtype` ('int8', 'bf16', 'fp16' or 'fp32') is the format of the
    transformer blocks' Linears; `head_dtype` that of CodeGen's LM head (default
    `lm_head_dtype`: int8 and fp32 as the Linears, fp16 for bf16 and fp16; CodeGeeX's
    output projection is its fp32 word embeddings).
    Embeddings and LayerNorms stay fp32. Returns the wrapped model, or `model`
    unchanged (after one warning) if the kernels cannot be built here.
    """
    from ..kernels import load
    from .fast_codegeex import FastCodeGeeXForCausalLM

    if not isinstance(model, (CodeGenForCausalLM, CodeGeeXForCausalLM)):
        raise ValueError(f"make_fast takes a CodeGenForCausalLM or CodeGeeXForCausalLM, got {type(model).__name__}")
    weight_dtype = weight_dtype_name(weight_dtype)
    head_dtype = lm_head_dtype(weight_dtype, head_dtype)
    kernels = load()
    if kernels is None:
        return model
    if isinstance(model, CodeGeeXForCausalLM):
        if any(isinstance(layer, WeightOnlyLinear) for layer in model.sublayers()):
            raise ValueError("make_fast converts a float32 model with plain Linears (not one already converted)")
        model.eval()
        return FastCodeGeeXForCausalLM(quantize_linears(model, weight_dtype), kernels)
    if not isinstance(model.lm_head, nn.Linear) or model.lm_head.weight.dtype != paddle.float32:
        raise ValueError("make_fast converts a float32 model with plain Linears (not one already converted)")
    quantize_linears(model, weight_dtype, skip=["lm_head"])
    model.lm_head = WeightOnlyLinear.from_linear(model.lm_head, head_dtype)
    model.eval()
    return FastCodeGenForCausalLM(model, kernels)


def release_freed_memory():
    """Hand the heap's freed pages back to the OS (glibc keeps them after many mid-size frees)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---- GPU: fp16 with fused attention ------------------------------------------------

class FP16GPUAttention(CodeGenAttention):
    """CodeGen attention through `F.scaled_dot_product_attention` (flash attention on GPU).

    Same projections and rotary as `CodeGenAttention`; the scores never
    materialise as a [batch, heads, seq, total] fp32 tensor.
    """

    def forward(self, x, sin, cos, bias, cache, layer_index):
        c = self.config
        query, key, value = self._split_qkv(self.qkv_proj(x))
        query, key = self._rotate(query, sin, cos), self._rotate(key, sin, cos)
        if cache is not None:
            # the cache is [batch, heads, length, head_dim]; SDPA wants [batch, length, heads, head_dim]
            key, value = cache.update(layer_index, key.transpose([0, 2, 1, 3]), value.transpose([0, 2, 1, 3]))
            key, value = key.transpose([0, 2, 1, 3]), value.transpose([0, 2, 1, 3])
        # the fp32 mask value overflows fp16 to -inf, which turns all-masked rows into NaN
        bias = paddle.clip(bias, min=float(paddle.finfo(query.dtype).min)).astype(query.dtype)
        out = F.scaled_dot_product_attention(query, key.astype(query.dtype), value.astype(query.dtype),
                                             attn_mask=bias, training=False,
                                             scale=1.0 / math.sqrt(c.head_dim))
        return self.out_proj(out.reshape([out.shape[0], out.shape[1], self.num_heads * c.head_dim]))

    def _rotate(self, t, sin, cos):
        from ..models.codegen import apply_rotary
        r = self.config.rotary_dim
        rotated = apply_rotary(t[..., :r].astype("float32"), sin, cos).astype(t.dtype)
        return paddle.concat([rotated, t[..., r:]], axis=-1) if r < self.config.head_dim else rotated


def use_fp16_gpu_attention(model: CodeGenForCausalLM, dtype: str = "float16") -> CodeGenForCausalLM:
    """Cast `model` to `dtype` and route its attention through `FP16GPUAttention`, in place.

    Meant for GPU (where SDPA is flash attention); on CPU it runs too, as a
    reference for the arithmetic. Logits still come back float32.
    """
    use_sdpa_attention(model)
    model.to(dtype=dtype)
    # rotary angles and LayerNorm statistics stay fp32: fp16 positions above 2048 lose precision
    model.rotary_sin = model.rotary_sin.astype("float32")
    model.rotary_cos = model.rotary_cos.astype("float32")
    return model


def use_sdpa_attention(model: CodeGenForCausalLM) -> CodeGenForCausalLM:
    """Route `model`'s attention through `FP16GPUAttention`, in place, keeping its weights as they are."""
    for block in model.transformer.h:
        fused = FP16GPUAttention(model.config, model.parallel)
        fused.qkv_proj, fused.out_proj = block.attn.qkv_proj, block.attn.out_proj
        block.attn = fused
    return model

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

import warnings

import json
import math
import struct
from pathlib import Path

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .cache import KVCache
from .codegen import MP_NUM, CodeGenAttention, CodeGenForCausalLM
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
        return KVCache(c.n_layer, batch_size, c.n_head, max_length or c.n_positions, c.head_dim, dtype or "float32")

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
        for i, weights in enumerate(self._block_weights):
            x = kernels.decoder_layer(x, weights, cache.keys[i], cache.values[i], mask, sin, cos, past=past,
                                      num_heads=c.n_head, rotary_dim=c.rotary_dim, mp_num=MP_NUM, eps=eps)
        cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        return model.lm_head(model.transformer.ln_f(x)).astype("float32")


def _head_dtype(weight_dtype: str, head_dtype: str | None) -> str:
    if head_dtype is not None:
        return weight_dtype_name(head_dtype)
    # The head turns hidden states straight into logits: bf16's 8-bit mantissa there flipped
    # the top-1 of close calls ~1% of the time in our tests, int8 likewise; fp16 did not.
    return weight_dtype if weight_dtype in ("float16", "float32") else "float32"


def make_fast(model: CodeGenForCausalLM, weight_dtype: str = "fp32", head_dtype: str | None = None):
    """Convert `model` in place for fast CPU inference and wrap it.

    `weight_dtype` ('int8', 'bf16', 'fp16' or 'fp32') is the format of the
    transformer blocks' Linears; `head_dtype` that of the LM head (default:
    fp32 for int8, as quantize="int8" leaves the logits matmul alone, and for
    bf16; fp16 for fp16). Embeddings and LayerNorms stay fp32. Returns the wrapped
    model, or `model` unchanged (after one warning) if the kernels cannot be
    built here.
    """
    from ..kernels import load

    if not isinstance(model, CodeGenForCausalLM):
        raise ValueError(f"make_fast takes a CodeGenForCausalLM, got {type(model).__name__}")
    weight_dtype = weight_dtype_name(weight_dtype)
    head_dtype = _head_dtype(weight_dtype, head_dtype)
    kernels = load()
    if kernels is None:
        return model
    if not isinstance(model.lm_head, nn.Linear) or model.lm_head.weight.dtype != paddle.float32:
        raise ValueError("make_fast converts a float32 model with plain Linears (not one already converted)")
    quantize_linears(model, weight_dtype, skip=["lm_head"])
    model.lm_head = WeightOnlyLinear.from_linear(model.lm_head, head_dtype)
    model.eval()
    return FastCodeGenForCausalLM(model, kernels)


def load_fast(name_or_path, weight_dtype: str = "fp32", head_dtype: str | None = None):
    """`make_fast(load_model(name_or_path), ...)` with a peak memory near the final model's.

    Each Linear is converted as soon as its weights are read, and tensors are
    read with plain file reads: a memory-mapped checkpoint counts in the
    process's RSS while it is open, which would double the peak. Falls back to
    the plain model (after load()'s warning) if the kernels cannot be built.
    """
    from ..checkpoints import WEIGHTS_FILE, build_model, load_model, read_config, resolve_model_dir
    from ..kernels import load

    model_dir = resolve_model_dir(name_or_path)
    config = read_config(model_dir)
    if config["model_type"] != "codegen":
        raise ValueError(f"{model_dir}: load_fast supports CodeGen checkpoints, not {config['model_type']!r}")
    weight_dtype = weight_dtype_name(weight_dtype)
    head_dtype = _head_dtype(weight_dtype, head_dtype)
    kernels = load()
    if kernels is None:
        return load_model(model_dir)
    weights = model_dir / WEIGHTS_FILE
    read = _tensor_reader(weights)
    with paddle.LazyGuard():
        model = build_model(config)
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    if set(expected) != set(read.names):
        missing, unexpected = sorted(set(expected) - set(read.names)), sorted(set(read.names) - set(expected))
        raise ValueError(f"{weights} does not match the config in {model_dir}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if read.shape(name) != shape:
            raise ValueError(f"{weights}: {name} has shape {read.shape(name)}, the config expects {shape}")
    for name, layer in list(model.named_sublayers()):
        if isinstance(layer, nn.Linear):
            # straight from the file into the packed format: the fp32 Linear is never built
            bias = read(f"{name}.bias") if layer.bias is not None else None
            weight, scale = kernels.pack_weight(_shared_tensor(read(f"{name}.weight")),
                                                head_dtype if name == "lm_head" else weight_dtype)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_sublayer(parent_name) if parent_name else model
            setattr(parent, attr, WeightOnlyLinear(weight, scale if weight.dtype == paddle.int8 else None,
                                                   paddle.to_tensor(bias) if bias is not None else None))
            continue
        for param_name, param in layer.named_parameters(include_sublayers=False):
            param.initialize()
            param.set_value(read(f"{name}.{param_name}"))
    _release_freed_memory()
    model.eval()
    return FastCodeGenForCausalLM(model, kernels)


def _shared_tensor(array):
    # a zero-copy view: a second copy of the largest weight would set the peak memory
    return paddle.utils.dlpack.from_dlpack(array)


def _release_freed_memory():
    """Hand the heap's freed pages back to the OS (glibc keeps them after many mid-size frees)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _tensor_reader:
    """Reads named tensors from a safetensors file one at a time, without mapping it."""

    _DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "I8": "int8", "I32": "int32", "I64": "int64",
               "U8": "uint8"}

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
        except (OSError, struct.error, ValueError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
        header.pop("__metadata__", None)
        self.header, self.data_start = header, 8 + size
        self.names = list(header)

    def shape(self, name: str) -> list[int]:
        return list(self.header[name]["shape"])

    def __call__(self, name: str):
        import numpy as np
        info = self.header[name]
        if info["dtype"] not in self._DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(self._DTYPES[info["dtype"]])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            array = np.fromfile(f, dtype=dtype, count=(end - start) // dtype.itemsize)
        return array.reshape(info["shape"]).astype("float32", copy=False)


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
        return self.out_proj(out.reshape([out.shape[0], out.shape[1], c.n_embd]))

    def _rotate(self, t, sin, cos):
        from .codegen import apply_rotary
        r = self.config.rotary_dim
        rotated = apply_rotary(t[..., :r].astype("float32"), sin, cos).astype(t.dtype)
        return paddle.concat([rotated, t[..., r:]], axis=-1) if r < self.config.head_dim else rotated


def use_fp16_gpu_attention(model: CodeGenForCausalLM, dtype: str = "float16") -> CodeGenForCausalLM:
    """Cast `model` to `dtype` and route its attention through `FP16GPUAttention`, in place.

    Meant for GPU (where SDPA is flash attention); on CPU it runs too, as a
    reference for the arithmetic. Logits still come back float32.
    """
    for block in model.transformer.h:
        fused = FP16GPUAttention(model.config)
        fused.qkv_proj, fused.out_proj = block.attn.qkv_proj, block.attn.out_proj
        block.attn = fused
    model.to(dtype=dtype)
    # rotary angles and LayerNorm statistics stay fp32: fp16 positions above 2048 lose precision
    model.rotary_sin = model.rotary_sin.astype("float32")
    model.rotary_cos = model.rotary_cos.astype("float32")
    return model


# ---- choosing the path -------------------------------------------------------------

def prepare_for_inference(model: CodeGenForCausalLM, *, quantize: str | None = None, use_fast: bool | None = None,
                          use_faster: bool | None = None, use_fp16_decoding: bool = False):
    """The model to generate with, given the user's flags (PaddleNLP names accepted).

    - quantize="int8": weight-only int8 on every transformer Linear (not the LM head).
    - use_fp16_decoding: fp16 weights; on CPU read by the kernels at half the bytes
      (fp32 arithmetic), on GPU the whole decoder in fp16 with fused attention.
    - use_fast (alias use_faster; default: on when the kernels build): the fused CPU path.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if use_fast is None:
        use_fast = use_faster
    if not isinstance(model, CodeGenForCausalLM):
        # CodeGeeX: weight-only int8 through the same Linear; the fused kernels are CodeGen's
        if use_fast or use_fp16_decoding:
            warnings.warn(f"the fast path and use_fp16_decoding support CodeGen only; "
                          f"{type(model).__name__} runs on the plain path", stacklevel=2)
        if quantize:
            quantize_linears(model, quantize)
        return model
    on_gpu = not model.lm_head.weight.place.is_cpu_place()
    if on_gpu:
        if use_fp16_decoding:
            use_fp16_gpu_attention(model)
        if quantize:
            quantize_linears(model, quantize, skip=["lm_head"])
        return model
    weight_dtype = "int8" if quantize else "fp16" if use_fp16_decoding else "fp32"
    if use_fast is not False:
        fast = make_fast(model, weight_dtype)
        if fast is not model:
            return fast
    # the plain path (asked for, or the kernels did not build: load() has warned)
    if weight_dtype != "fp32":
        quantize_linears(model, weight_dtype, skip=["lm_head"])
    return model


def load_for_inference(model_dir, *, quantize: str | None = None, use_fast: bool | None = None,
                       use_fp16_decoding: bool = False):
    """`prepare_for_inference(load_model(model_dir), ...)`, reading a CodeGen checkpoint straight into the
    fast CPU model when that is where it ends up, so loading peaks near the final model's memory rather
    than the fp32 model's plus the mapped file."""
    from ..checkpoints import load_model, read_config, resolve_model_dir

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    model_dir = resolve_model_dir(model_dir)
    direct = (use_fast is not False and paddle.get_device() == "cpu"
              and read_config(model_dir)["model_type"] == "codegen")
    model = load_model(model_dir) if not direct else load_fast(
        model_dir, "int8" if quantize else "fp16" if use_fp16_decoding else "fp32")
    if isinstance(model, FastCodeGenForCausalLM):
        return model
    # not CodeGen, not on CPU, the plain path asked for, or the kernels did not build (load() has warned)
    return prepare_for_inference(model, quantize=quantize, use_fast=False if direct else use_fast,
                                 use_fp16_decoding=use_fp16_decoding)

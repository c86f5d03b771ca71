"""Weight-only quantized Linear layers.

`WeightOnlyLinear` replaces `paddle.nn.Linear` anywhere: it keeps the weight
as int8 (one symmetric absmax scale per output row), bf16, fp16 or fp32 and
computes in fp32. On CPU the compiled kernels read the narrow weights
directly (a matrix-vector product for a few rows, a blocked GEMM for more);
elsewhere (or without the kernels) it dequantizes and multiplies.
`quantize_linears(model, "int8", skip=["lm_head"])` swaps every Linear of a
model in place.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

import paddle
import paddle.nn as nn

from ..weight_formats import format_name as weight_dtype_name


def quantize_int8_rows(weight_out_in: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """int8 [out, in] and fp32 scales [out] with weight ~= int8 * scale[:, None]."""
    w = weight_out_in.astype("float32")
    absmax = w.abs().max(axis=1)
    # an all-zero row would divide by zero; any scale reproduces its zeros
    scale = paddle.where(absmax > 0, absmax / 127.0, paddle.ones_like(absmax))
    quantized = paddle.clip(paddle.round(w / scale.unsqueeze(1)), -127, 127).astype("int8")
    return quantized, scale


class WeightOnlyLinear(nn.Layer):
    """y = x @ W^T (* per-row scale) + bias with W [out, in] stored narrow; x and y fp32.

    Buffers: `weight` [out, in] (int8/bfloat16/float16/float32), `weight_scale` [out]
    (int8 only, else None) and `bias` [out] or None, all saved in the state dict.
    """

    def __init__(self, weight: paddle.Tensor, weight_scale: paddle.Tensor | None = None,
                 bias: paddle.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_dtype = weight_dtype_name(weight.dtype)
        if (self.weight_dtype == "int8") != (weight_scale is not None):
            raise ValueError("weight_scale is required for int8 weights and only for them")
        for name, t in (("weight_scale", weight_scale), ("bias", bias)):
            if t is not None and t.shape != [self.out_features]:
                raise ValueError(f"{name} must have shape [{self.out_features}], got {t.shape}")
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias.astype("float32") if bias is not None else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_dtype: str = "int8") -> "WeightOnlyLinear":
        weight_dtype = weight_dtype_name(weight_dtype)
        # paddle keeps Linear weights [in, out]; rows per output make each output one dot product
        kernels = _cpu_kernels(linear.weight)
        if kernels is not None and linear.weight.dtype == paddle.float32:
            weight, scale = kernels.pack_weight(linear.weight.detach(), weight_dtype)
        else:
            w_out_in = paddle.transpose(linear.weight.detach(), [1, 0])
            if weight_dtype == "int8":
                weight, scale = quantize_int8_rows(w_out_in)
            else:
                weight, scale = w_out_in.astype(weight_dtype).contiguous(), None
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(weight, scale if weight_dtype == "int8" else None, bias)

    def dequantized_weight(self, dtype: str = "float32") -> paddle.Tensor:
        """The weight as `dtype` [out, in]."""
        dtype = weight_dtype_name(dtype)
        if self.weight_dtype == dtype and self.weight_scale is None:
            return self.weight
        kernels = _cpu_kernels(self.weight)
        if kernels is not None and dtype == "float32":
            return kernels.dequantize(self.weight, self.weight_scale)
        w = self.weight.astype("float32")
        if self.weight_scale is not None:
            w = w * self.weight_scale.unsqueeze(1)
        return w.astype(dtype)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, this layer expects {self.in_features}")
        kernels = _cpu_kernels(self.weight)
        if kernels is not None and x.dtype == paddle.float32:
            return kernels.weight_only_linear(x.contiguous(), self.weight, self.weight_scale, self.bias)
        y = paddle.matmul(x, self.dequantized_weight(x.dtype), transpose_y=True)
        return y + self.bias.astype(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_dtype={self.weight_dtype}, bias={self.bias is not None}")


def _cpu_kernels(weight: paddle.Tensor):
    if not weight.place.is_cpu_place():
        return None
    from ..kernels import load
    return load()


def quantize_linears(model: nn.Layer, dtype: str = "int8", skip: Iterable[str] = ()) -> nn.Layer:
    """Replace, in place, every `nn.Linear` of `model` by a `WeightOnlyLinear` of `dtype`.

    `skip` holds qualified sublayer names or fnmatch patterns (e.g. "lm_head",
    "*.attn.*") of Linears to leave alone. Returns `model`.
    """
    patterns = list(skip)
    names = [name for name, layer in model.named_sublayers()
             if isinstance(layer, nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model
        for part in parent_name.split(".") if parent_name else ():
            parent = getattr(parent, part)
        # one layer at a time: the old fp32 weight is freed as soon as it is replaced
        setattr(parent, attr, WeightOnlyLinear.from_linear(getattr(parent, attr), dtype))
    return model

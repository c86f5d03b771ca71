"""Loading a checkpoint for inference: the path a model takes is decided here, once.

`decide` picks, from the checkpoint's architecture and stored weight format, the
device and the user's flags (`quantize`, `use_fp16_decoding`, `use_fast`), one of:

- "fused-cpu": CodeGen or CodeGeeX on the compiled CPU kernels (`FastCodeGenForCausalLM`,
  `FastCodeGeeXForCausalLM`), the transformer Linears int8 / fp16 / bf16 / fp32
  `WeightOnlyLinear`s;
- "gpu": the whole model in fp32 / fp16 / bf16 on the GPU (CodeGen's attention
  through fused SDPA when half precision);
- "plain": Paddle's eager model, on CPU or GPU, its Linears `WeightOnlyLinear`s when
  the weights are narrower than fp32.

`load_for_inference` then builds the model without allocating it (paddle.LazyGuard)
and reads the safetensors file tensor by tensor, in row blocks, straight into each
weight's final format on its final device: no weight ever exists in fp32 unless it
stays fp32, so loading peaks at the final weights plus a few blocks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
import paddle.nn as nn

from ..checkpoints import (CONFIG_FILE, WEIGHTS_FILE, SafetensorsFile, build_model, check_tensors,
                           expected_tensors, int8_linear_names, read_config, resolve_model_dir, weight_format)
from ..weight_formats import cast_rows, pack_linear
from .fast import FastCodeGenForCausalLM, _head_dtype, _release_freed_memory, use_sdpa_attention
from .fast_codegeex import FastCodeGeeXForCausalLM
from .quantize import WeightOnlyLinear


@dataclass(frozen=True)
class Plan:
    """Where a model runs and in what format each of its weights is kept.

    `linears`: the transformer Linears' format, None for Paddle Linears in `dtype`;
    `head`: CodeGen's LM head's, likewise; `dtype`: every other weight's.
    """
    path: str                 # "fused-cpu", "gpu" or "plain"
    device: str
    linears: str | None
    head: str | None
    dtype: str = "float32"


def decide(model_type: str, stored: str, device: str, *, quantize: str | None = None,
           use_fp16_decoding: bool = False, use_fast: bool | None = None,
           have_kernels: Callable[[], bool] = lambda: _kernels() is not None) -> Plan:
    """The plan for a checkpoint of `model_type` whose weights are stored as `stored`
    (config.json's weight_format) on `device` ("cpu", "gpu", "gpu:N").

    Weights load in the format asked for (int8 with `quantize`, fp16 with
    `use_fp16_decoding`), else in the one stored. `have_kernels` is asked only when the
    fused CPU path would be taken (building the kernels takes ~20 s the first time).
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if stored == "int8":
        if use_fp16_decoding:
            # as quantize="int8" overrides use_fp16_decoding; dequantizing would only give int8's
            # precision under fp16's name (and the server asks for fp16 by default)
            warnings.warn("use_fp16_decoding asks for fp16 weights but the checkpoint holds int8 weights "
                          "(codegen convert --quantize int8): running int8; load the float checkpoint for fp16",
                          stacklevel=3)
        quantize = "int8"
    weights = "int8" if quantize else "float16" if use_fp16_decoding else stored
    if device.startswith("gpu"):
        if weights == "int8":
            return Plan("plain", device, linears="int8", head=None)
        return Plan("gpu", device, linears=None, head=None, dtype=weights)
    if use_fast is not False and have_kernels():
        # CodeGeeX's output projection is its tied fp32 word embeddings: no head of its own
        return Plan("fused-cpu", device, linears=weights,
                    head=_head_dtype(weights, None) if model_type == "codegen" else None)
    return Plan("plain", device, linears=None if weights == "float32" else weights, head=None)


def load_for_inference(model_dir, *, quantize: str | None = None, use_fast: bool | None = None,
                       use_fp16_decoding: bool = False, device: str | None = None) -> nn.Layer:
    """The model to generate with from a converted checkpoint, on `device` (default: Paddle's current one)."""
    model_dir = resolve_model_dir(model_dir)
    config = read_config(model_dir)
    plan = decide(config["model_type"], weight_format(config), device or paddle.get_device(), quantize=quantize,
                  use_fp16_decoding=use_fp16_decoding, use_fast=use_fast)
    return load_planned(model_dir, config, plan)


def load_planned(model_dir: Path, config: dict, plan: Plan) -> nn.Layer:
    """Read `model_dir`'s weights into the model `plan` describes."""
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found: the checkpoint in {model_dir} is incomplete")
    weights = SafetensorsFile(weights_path)
    stored = weight_format(config)
    default_dtype = paddle.get_default_dtype()
    paddle.set_default_dtype(plan.dtype)  # the lazy parameters are declared in their final dtype
    try:
        with paddle.LazyGuard():
            model = build_model(config)
    finally:
        paddle.set_default_dtype(default_dtype)
    check_tensors(weights, expected_tensors(model, stored),
                  f"the {config['model_type']} config in {model_dir / CONFIG_FILE}")
    place = paddle.CPUPlace() if plan.device == "cpu" else paddle.CUDAPlace(_gpu_index(plan.device))
    transformer_linears = int8_linear_names(model)
    formats = {name: plan.linears for name in transformer_linears}
    if "lm_head" in dict(model.named_sublayers()):
        formats["lm_head"] = plan.head
    prequantized = set(transformer_linears) if stored == "int8" else set()
    for name, layer in list(model.named_sublayers()):
        if isinstance(layer, nn.Linear) and formats.get(name) is not None:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_sublayer(parent_name) if parent_name else model
            setattr(parent, attr, _weight_only_linear(weights, name, layer, formats[name], name in prequantized,
                                                      place))
            continue
        for param_name, param in layer.named_parameters(include_sublayers=False):
            full = f"{name}.{param_name}" if name else param_name
            array = cast_rows(_reader(weights, full), param.shape, plan.dtype)
            _device_tensor(array, place)._share_buffer_to(param)
    _release_freed_memory()
    model.eval()
    if plan.path == "gpu" and plan.dtype != "float32" and config["model_type"] == "codegen":
        use_sdpa_attention(model)
    if plan.path == "fused-cpu":
        fast = FastCodeGeeXForCausalLM if config["model_type"] == "codegeex" else FastCodeGenForCausalLM
        return fast(model, _kernels())
    return model


def _weight_only_linear(weights: SafetensorsFile, name: str, layer: nn.Linear, fmt: str, prequantized: bool,
                        place) -> WeightOnlyLinear:
    if prequantized:
        # converted with --quantize int8: the rows and scales are read as they are
        packed, scale = weights.rows(f"{name}.weight"), weights.rows(f"{name}.weight_scale")
    else:
        packed, scale = pack_linear(_reader(weights, f"{name}.weight"), tuple(layer.weight.shape), fmt)
    bias = None
    if layer.bias is not None:
        bias = _device_tensor(weights.float_rows(f"{name}.bias"), place)
    return WeightOnlyLinear(_device_tensor(packed, place),
                            _device_tensor(scale, place) if scale is not None else None, bias)


def _reader(weights: SafetensorsFile, name: str):
    return lambda start, stop: weights.float_rows(name, start, stop)


def _device_tensor(array: np.ndarray, place) -> paddle.Tensor:
    """`array` as a Paddle tensor on `place` (uint16 arrays hold bfloat16 bits). On CPU the
    tensor shares the array's memory: a copy of the largest weight would set the peak."""
    bfloat16 = array.dtype == np.uint16
    if bfloat16:
        array = array.view(np.int16)  # Paddle reinterprets int16 as bfloat16, not uint16
    if isinstance(place, paddle.CPUPlace):
        tensor = paddle.utils.dlpack.from_dlpack(np.ascontiguousarray(array))
    else:
        tensor = paddle.to_tensor(array, place=place)
    return tensor.view(paddle.bfloat16) if bfloat16 else tensor


def _gpu_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _kernels():
    from ..kernels import load
    return load()

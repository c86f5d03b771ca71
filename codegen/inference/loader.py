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

Under tensor parallelism (`Plan.parallel`, models/parallel.py) each rank builds its share
of the model and reads only its slice of every split matrix: a contiguous range of a
column-parallel Linear's outputs and of a row-parallel one's inputs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
import paddle.nn as nn

from ..checkpoints import (CONFIG_FILE, WEIGHTS_FILE, SafetensorsFile, build_model, check_tensors,
                           expected_tensors, int8_linear_names, read_config, resolve_model_dir, weight_format)
from ..models.parallel import UNSPLIT, TensorParallel
from ..weight_formats import cast_rows, int8_scales, pack_linear, row_blocks
from .fast import FastCodeGenForCausalLM, lm_head_dtype, release_freed_memory, use_sdpa_attention
from .fast_codegeex import FastCodeGeeXForCausalLM
from .quantize import WeightOnlyLinear


@dataclass(frozen=True)
class Plan:
    """Where a model runs and in what format each of its weights is kept.

    `linears`: the transformer Linears' format, None for Paddle Linears in `dtype`;
    `head`: CodeGen's LM head's, likewise; `dtype`: every other weight's; `parallel`: this
    process's share of the model.
    """
    path: str                 # "fused-cpu", "gpu" or "plain"
    device: str
    linears: str | None
    head: str | None
    dtype: str = "float32"
    parallel: TensorParallel = UNSPLIT


def decide(model_type: str, stored: str, device: str, *, quantize: str | None = None,
           use_fp16_decoding: bool = False, use_fast: bool | None = None, split: bool = False,
           have_kernels: Callable[[], bool] = lambda: _kernels() is not None) -> Plan:
    """The plan for a checkpoint of `model_type` whose weights are stored as `stored`
    (config.json's weight_format) on `device` ("cpu", "gpu", "gpu:N").

    Weights load in the format asked for (int8 with `quantize`, fp16 with
    `use_fp16_decoding`), else in the one stored. `have_kernels` is asked only when the
    fused CPU path would be taken (building the kernels takes ~20 s the first time). `split`:
    the model is divided over tensor-parallel ranks.
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
    # the fused CodeGeeX layer has no tensor-parallel form (it adds its residuals itself):
    # a split CodeGeeX runs on the plain path
    if use_fast is not False and not (split and model_type == "codegeex") and have_kernels():
        # CodeGeeX's output projection is its tied fp32 word embeddings: no head of its own
        return Plan("fused-cpu", device, linears=weights,
                    head=lm_head_dtype(weights, None) if model_type == "codegen" else None)
    return Plan("plain", device, linears=None if weights == "float32" else weights, head=None)


def load_for_inference(model_dir, *, quantize: str | None = None, use_fast: bool | None = None,
                       use_fp16_decoding: bool = False, device: str | None = None,
                       parallel: TensorParallel = UNSPLIT) -> nn.Layer:
    """The model to generate with from a converted checkpoint, on `device` (default: Paddle's current one);
    with `parallel`, this rank's share of it."""
    model_dir = resolve_model_dir(model_dir)
    config = read_config(model_dir)
    plan = decide(config["model_type"], weight_format(config), device or paddle.get_device(), quantize=quantize,
                  use_fp16_decoding=use_fp16_decoding, use_fast=use_fast, split=parallel.world > 1)
    return load_planned(model_dir, config, replace(plan, parallel=parallel))


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
            model = build_model(config, plan.parallel)
    finally:
        paddle.set_default_dtype(default_dtype)
    transformer_linears = int8_linear_names(model)
    prequantized = set(transformer_linears) if stored == "int8" else set()
    share = _Share(model, plan.parallel)
    check_tensors(weights, share.whole_shapes(expected_tensors(model, stored), prequantized),
                  f"the {config['model_type']} config in {model_dir / CONFIG_FILE}")
    place = paddle.CPUPlace() if plan.device == "cpu" else paddle.CUDAPlace(_gpu_index(plan.device))
    formats = {name: plan.linears for name in transformer_linears}
    if "lm_head" in dict(model.named_sublayers()):
        formats["lm_head"] = plan.head
    for name, layer in list(model.named_sublayers()):
        if isinstance(layer, nn.Linear) and formats.get(name) is not None:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_sublayer(parent_name) if parent_name else model
            setattr(parent, attr, _weight_only_linear(weights, name, layer, formats[name], name in prequantized,
                                                      place, share))
            continue
        for param_name, param in layer.named_parameters(include_sublayers=False):
            full = f"{name}.{param_name}" if name else param_name
            array = cast_rows(share.reader(weights, full), param.shape, plan.dtype)
            _device_tensor(array, place)._share_buffer_to(param)
    release_freed_memory()
    model.eval()
    if plan.path == "gpu" and plan.dtype != "float32" and config["model_type"] == "codegen":
        use_sdpa_attention(model)
    if plan.path == "fused-cpu":
        fast = FastCodeGeeXForCausalLM if config["model_type"] == "codegeex" else FastCodeGenForCausalLM
        return fast(model, _kernels())
    return model


def _weight_only_linear(weights: SafetensorsFile, name: str, layer: nn.Linear, fmt: str, prequantized: bool,
                        place, share: "_Share") -> WeightOnlyLinear:
    weight = f"{name}.weight"
    if prequantized:
        # converted with --quantize int8: the rows [out, in] and scales are read as they are
        packed, scale = share.int8_rows(weights, weight), share.int8_scales(weights, name)
    else:
        scale = None
        if fmt == "int8" and share.cut(weight) is not None and share.cut(weight)[0] == 0:
            # a share of the inputs: each output's scale is that of its whole row, as on one process
            scale = int8_scales(share.reader(weights, weight, whole=True), weights.shape(weight))
        packed, scale = pack_linear(share.reader(weights, weight), tuple(layer.weight.shape), fmt, scale)
    bias = None
    if layer.bias is not None:
        bias = _device_tensor(cast_rows(share.reader(weights, f"{name}.bias"), layer.bias.shape, "float32"), place)
    return WeightOnlyLinear(_device_tensor(packed, place),
                            _device_tensor(scale, place) if scale is not None else None, bias)


class _Share:
    """This rank's slice of each tensor of a checkpoint: a split Linear's weight is cut along one
    axis of Paddle's [in, out] layout (outputs for column-parallel, inputs for row-parallel), a
    column-parallel bias along its outputs; a row-parallel bias is rank 0's alone (zeros elsewhere:
    the all-reduce adds it once). Every other tensor is whole."""

    def __init__(self, model: nn.Layer, parallel: TensorParallel):
        self.world = parallel.world
        self.cuts: dict[str, tuple[int, int, int]] = {}    # tensor -> (axis, start, stop)
        self.zeros: set[str] = set()
        if parallel.world == 1:
            return
        for name, layer in model.named_sublayers():
            kind = name.rpartition(".")[2]
            if kind not in model.column_parallel + model.row_parallel:
                continue
            axis = 1 if kind in model.column_parallel else 0
            size = layer.weight.shape[axis]
            self.cuts[f"{name}.weight"] = (axis, parallel.rank * size, (parallel.rank + 1) * size)
            if layer.bias is not None and axis == 1:
                self.cuts[f"{name}.bias"] = (0, parallel.rank * size, (parallel.rank + 1) * size)
            elif layer.bias is not None and parallel.rank != 0:
                self.zeros.add(f"{name}.bias")

    def cut(self, name: str) -> tuple[int, int, int] | None:
        return self.cuts.get(name)

    def whole_shapes(self, expected: dict, int8: set[str]) -> dict:
        """`expected` (this rank's tensors, as `expected_tensors` names them) with the shapes of the whole
        model's; `int8` names the Linears stored as int8 [out, in] with a scale per output."""
        whole = dict(expected)
        for name, (axis, _, _) in self.cuts.items():
            layer, _, kind = name.rpartition(".")
            if layer in int8 and kind == "weight":
                axis = 1 - axis
                if axis == 0:
                    whole[f"{layer}.weight_scale"] = (whole[f"{layer}.weight_scale"][0] * self.world,)
            shape = list(whole[name])
            shape[axis] *= self.world
            whole[name] = tuple(shape)
        return whole

    def reader(self, weights: SafetensorsFile, name: str, whole: bool = False):
        """A float32 row reader of this rank's slice of tensor `name` (of all of it with `whole`)."""
        cut = None if whole else self.cut(name)
        if name in self.zeros and not whole:
            return lambda start, stop: np.zeros((stop - start, *weights.shape(name)[1:]), dtype=np.float32)
        if cut is None:
            return lambda start, stop: weights.float_rows(name, start, stop)
        axis, first, last = cut
        if axis == 0:
            return lambda start, stop: weights.float_rows(name, first + start, first + stop)
        return lambda start, stop: np.ascontiguousarray(weights.float_rows(name, start, stop)[:, first:last])

    def int8_rows(self, weights: SafetensorsFile, name: str) -> np.ndarray:
        """This rank's slice of an int8 weight stored [out, in] (the cut's axis swapped)."""
        cut = self.cut(name)
        if cut is None:
            return weights.rows(name)
        axis, first, last = cut
        if axis == 1:
            return weights.rows(name, first, last)
        # a share of the inputs: columns of the stored rows, read a block of rows at a time
        rows = weights.shape(name)[0]
        out = np.empty((rows, last - first), dtype=np.int8)
        for start, stop in row_blocks(rows, weights.shape(name)[1]):
            out[start:stop] = weights.rows(name, start, stop)[:, first:last]
        return out

    def int8_scales(self, weights: SafetensorsFile, linear: str) -> np.ndarray:
        """This rank's per-output scales of an int8 Linear (all of them unless its outputs are split)."""
        cut = self.cut(f"{linear}.weight")
        if cut is not None and cut[0] == 1:
            return weights.rows(f"{linear}.weight_scale", cut[1], cut[2])
        return weights.rows(f"{linear}.weight_scale")


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

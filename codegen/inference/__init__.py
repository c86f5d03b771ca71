"""Inference: loading a checkpoint into the model that generates, and the kernel-backed layers.

`loader` decides the path a model takes (fused CPU kernels, GPU, plain Paddle) and
streams the weights into it; `quantize` holds `WeightOnlyLinear`, the Linear whose
narrow weights the kernels read; `fast` the fused CodeGen model and the GPU attention.
Kept apart from `codegen.models`, which is the architectures in plain Paddle.
"""
from .fast import release_freed_memory
from .loader import Plan, decide, load_for_inference

__all__ = ["Plan", "decide", "load_for_inference", "release_freed_memory"]

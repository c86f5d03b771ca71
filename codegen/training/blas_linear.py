"""Linear layers whose CPU training matmuls run in NumPy's BLAS.

Paddle's eager CPU matmul runs on one thread at about a third of the speed of the OpenBLAS that NumPy
links here (about 33 vs 95 GFLOPS for a [4096, 256] x [256, 1024] product on this 2-core machine), and
matmuls are most of a training step. Tensors cross over through DLPack, so nothing is copied on the way
in or out. Only the forward and backward matmuls move; parameters, optimizer and data-parallel gradient
reduction stay Paddle's. Numerically this is a different fp32 summation order, nothing more.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle.autograd import PyLayer


def _array(tensor: paddle.Tensor) -> np.ndarray:
    return np.from_dlpack(tensor.detach())


def _tensor(array: np.ndarray) -> paddle.Tensor:
    return paddle.from_dlpack(np.ascontiguousarray(array))


class _LinearFunction(PyLayer):
    """y = x @ weight (+ bias), weight [in, out] as in paddle.nn.Linear."""

    @staticmethod
    def forward(ctx, x, weight, *bias):
        ctx.save_for_backward(x, weight)
        # Paddle wants None, not a gradient, for an input that needs none (frozen weights under LoRA)
        ctx.needs_grad = [not t.stop_gradient for t in (x, weight, *bias)]
        x2 = _array(x).reshape(-1, x.shape[-1])
        y = x2 @ _array(weight)
        if bias:
            y += _array(bias[0])
        return _tensor(y.reshape([*x.shape[:-1], weight.shape[1]]))

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensor()
        g2 = _array(grad_y).reshape(-1, grad_y.shape[-1])
        needs_x, needs_weight, *needs_bias = ctx.needs_grad
        grads = [
            _tensor((g2 @ _array(weight).T).reshape(x.shape)) if needs_x else None,
            _tensor(_array(x).reshape(-1, x.shape[-1]).T @ g2) if needs_weight else None,
        ]
        if needs_bias:
            grads.append(_tensor(g2.sum(axis=0)) if needs_bias[0] else None)
        return tuple(grads)


def _blas_forward(self, x):
    if self.bias is None:
        return _LinearFunction.apply(x, self.weight)
    return _LinearFunction.apply(x, self.weight, self.bias)


def use_blas_linears(model: paddle.nn.Layer) -> int:
    """Route every fp32 paddle.nn.Linear of `model` through NumPy's BLAS; returns how many.

    Only for training on CPU: the layers keep their parameters and state-dict names.
    """
    count = 0
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Linear) and layer.weight.dtype == paddle.float32:
            layer.forward = _blas_forward.__get__(layer)
            count += 1
    return count

"""run_clm.py's CPU Linear layers computed in NumPy's BLAS give Paddle's outputs and gradients."""
import numpy as np
import paddle
import pytest

from codegen.training.blas_linear import use_blas_linears
from codegen.training.trainer import causal_lm_loss


def outputs_and_grads(model, x, blas: bool):
    if blas:
        assert use_blas_linears(model) == sum(isinstance(m, paddle.nn.Linear) for m in model.sublayers())
    out = model(x)
    (out * paddle.arange(out.numel().item(), dtype="float32").reshape(out.shape).sin()).sum().backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    return out.numpy(), grads, x.grad.numpy() if x.grad is not None else None


@pytest.mark.parametrize("bias", [True, False])
def test_blas_linear_matches_paddle_forward_and_backward(bias):
    results = []
    for blas in (False, True):
        paddle.seed(3)
        model = paddle.nn.Sequential(paddle.nn.Linear(16, 24, bias_attr=None if bias else False),
                                     paddle.nn.GELU(), paddle.nn.Linear(24, 8))
        x = paddle.randn([2, 5, 16])
        x.stop_gradient = False
        results.append(outputs_and_grads(model, x, blas))
    (out, grads, x_grad), (blas_out, blas_grads, blas_x_grad) = results
    np.testing.assert_allclose(blas_out, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blas_x_grad, x_grad, rtol=1e-5, atol=1e-6)
    assert blas_grads.keys() == grads.keys() and len(grads) == (4 if bias else 3)
    for name in grads:
        np.testing.assert_allclose(blas_grads[name], grads[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_codegen_training_step_is_the_same_through_blas(tiny_model_dir):
    from codegen.checkpoints import load_model
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, 51200, size=(2, 12)), dtype="int64")
    losses, grads = [], []
    for blas in (False, True):
        model = load_model(tiny_model_dir)
        model.train()
        if blas:
            use_blas_linears(model)
        loss = causal_lm_loss(model(ids), ids)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7, err_msg=name)


def test_frozen_weights_get_no_gradient_but_the_input_does():
    results = []
    for blas in (False, True):
        paddle.seed(5)
        layer = paddle.nn.Linear(8, 4)
        layer.weight.stop_gradient = True
        if blas:
            use_blas_linears(layer)
        x = paddle.randn([3, 8])
        x.stop_gradient = False
        layer(x).sum().backward()
        results.append((x.grad.numpy(), layer.weight.grad, layer.bias.grad.numpy()))
    (x_grad, weight_grad, bias_grad), (blas_x_grad, blas_weight_grad, blas_bias_grad) = results
    assert weight_grad is None and blas_weight_grad is None
    np.testing.assert_allclose(blas_x_grad, x_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blas_bias_grad, bias_grad, rtol=1e-5, atol=1e-6)

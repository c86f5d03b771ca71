"""The decode matvec (up to 16 activation rows): a row's result must not depend on the rows
computed with it, so one forward pass over n tokens (prompt lookup verifying drafts) gives
the logits of n one-token steps bit for bit, and greedy decoding with drafts equals plain
greedy decoding.

The first use of the kernels may compile them (~20 s, then cached under $CODEGEN_HOME/kernels).
"""
import shutil

import numpy as np
import paddle
import pytest

from codegen import kernels
from codegen.inference.fast import make_fast
from codegen.inference.quantize import WeightOnlyLinear
from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the kernels cannot be built here")

FORMATS = ["fp32", "bf16", "fp16", "int8"]
# inputs that are not a multiple of any vector width or unroll, and an int8 row longer than one
# block of int32 sums (8,192 columns with AVX-512); output counts that leave partial tiles
SHAPES = [(37, 13), (1000, 7), (8192 + 77, 5)]


def linear_layer(dtype: str, k: int, n: int, seed: int) -> WeightOnlyLinear:
    paddle.seed(seed)
    return WeightOnlyLinear.from_linear(paddle.nn.Linear(k, n, bias_attr=False), dtype)


def matvec(layer: WeightOnlyLinear, x: np.ndarray) -> np.ndarray:
    assert x.shape[0] <= 16  # the matvec path: more rows take the GEMM
    return kernels.load().weight_only_linear(paddle.to_tensor(x), layer.weight, layer.weight_scale).numpy()


def activations(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # rows of different magnitudes: each gets its own int16 scale for int8 weights
    return (rng.standard_normal((rows, k)) * rng.uniform(0.1, 10, (rows, 1))).astype(np.float32)


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_each_row_of_n_rows_equals_that_row_computed_alone(dtype, k, n):
    layer = linear_layer(dtype, k, n, seed=k)
    x = activations(16, k, seed=n)
    alone = np.concatenate([matvec(layer, x[m:m + 1]) for m in range(16)])
    for rows in range(1, 17):
        together = matvec(layer, x[:rows])
        for m in range(rows):
            assert together[m].tobytes() == alone[m].tobytes(), f"row {m} of {rows} differs from row {m} alone"


def int16_rounded(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row as int16 and its scale, as MatvecInput::round_to_int16 does it (float32 arithmetic,
    rounding half to even)."""
    absmax = np.abs(x).max(axis=1).astype(np.float32)
    scale = absmax / np.float32(32767)
    inv = np.where(absmax > 0, np.float32(32767) / np.where(absmax > 0, absmax, 1), 0).astype(np.float32)
    return np.rint(x * inv[:, None]).astype(np.int16), scale


@pytest.mark.parametrize("k,n", SHAPES)
def test_int8_output_is_the_exact_integer_dot_product_scaled_once(k, n):
    layer = linear_layer("int8", k, n, seed=k + 1)
    x = activations(16, k, seed=n + 1)
    x[3] = 0.0  # an all-zero row keeps scale 0
    q, x_scale = int16_rounded(x)
    dot = q.astype(np.int64) @ layer.weight.numpy().astype(np.int64).T
    w_scale = layer.weight_scale.numpy().astype(np.float32)
    expected = (w_scale[None, :] * x_scale[:, None]) * dot.astype(np.float32)
    for rows in (1, 2, 9, 16):
        assert matvec(layer, x[:rows]).tobytes() == expected[:rows].tobytes()


def test_int8_sums_of_extreme_values_are_exact():
    # every weight -128 and every activation at its row's maximum (rounded to +-32767): the
    # largest products there are, over three blocks of int32 sums and a tail
    k = 3 * 8192 + 45
    layer = WeightOnlyLinear(paddle.full([3, k], -128, dtype="int8"), paddle.to_tensor([1.0, 0.5, 0.25]))
    x = np.where(np.arange(k) % 5 == 0, -3.0, 3.0).astype(np.float32)[None].repeat(2, axis=0)
    x[1] = 3.0
    dot = np.array([-128 * 32767 * int(np.sign(x[m]).sum()) for m in range(2)])
    expected = (np.float32([1.0, 0.5, 0.25])[None, :] * np.float32(3.0 / 32767)) * dot[:, None].astype(np.float32)
    assert matvec(layer, x).tobytes() == expected.astype(np.float32).tobytes()


def ragged_fast_model(dtype: str, n_embd: int = 120, n_head: int = 8):
    # embd 120 and head_dim 15 are not multiples of the vector widths; 503 logits rows are odd
    paddle.seed(7)
    config = CodeGenConfig(vocab_size=503, n_positions=64, n_embd=n_embd, n_layer=2, n_head=n_head, rotary_dim=8)
    model = CodeGenForCausalLM(config)
    model.eval()
    return make_fast(model, dtype, head_dtype=dtype)


# head_dim 15 is all past the vector width; 40 is two vectors and a tail, so a query's scores are
# summed a lane's worth of keys at a time (simd::sums) over 20 to 35 keys: whole and partial blocks
@pytest.mark.parametrize("dtype,n_embd,n_head", [("fp32", 120, 8), ("int8", 120, 8), ("bf16", 120, 8),
                                                 ("fp32", 160, 4), ("int8", 160, 4)])
def test_one_forward_of_n_tokens_gives_the_logits_of_n_one_token_steps(dtype, n_embd, n_head):
    model = ragged_fast_model(dtype, n_embd, n_head)
    rng = np.random.default_rng(0)
    prompt = paddle.to_tensor(rng.integers(0, 503, (1, 20)), dtype="int64")  # over 16 tokens: the GEMM path
    with paddle.no_grad():
        for n in range(2, 17):
            tokens = paddle.to_tensor(rng.integers(0, 503, (1, n)), dtype="int64")
            together_cache, steps_cache = model.new_cache(1, 40), model.new_cache(1, 40)
            model(prompt, None, together_cache)
            model(prompt, None, steps_cache)
            together = model(tokens, None, together_cache).numpy()
            steps = np.concatenate([model(tokens[:, i:i + 1], None, steps_cache).numpy() for i in range(n)], axis=1)
            assert together.tobytes() == steps.tobytes(), f"{n} tokens at once differ from {n} steps"
            for i in range(len(model.model.transformer.h)):
                assert together_cache.keys[i].numpy().tobytes() == steps_cache.keys[i].numpy().tobytes()

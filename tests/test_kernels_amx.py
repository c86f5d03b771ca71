"""The AMX int8 matvec (codegen/kernels/amx_matvec.h): exact integer dot products, so an int8
model's logits do not depend on how many tokens one forward pass feeds it (the int8 matvec
contract in codegen/kernels/matvec.h), and verifying drafts cannot change greedy's tokens."""
import numpy as np
import paddle
import pytest

from codegen import kernels
from codegen.generation import GenerationConfig
from codegen.inference.fast import make_fast

from conftest import LOOKUP_PROMPTS, VOCAB, copy_model, needs_kernels, plain, run, small_model


@pytest.fixture
def amx():
    """The kernels with AMX taking every int8 matvec (1 to 16 rows); the default after the test."""
    loaded = kernels.load()
    if loaded is None or not loaded.amx_matvec_min_rows():
        pytest.skip("no AMX (or no kernels) here")
    loaded.use_amx_matvec(True, min_rows=1)
    yield loaded
    loaded.use_amx_matvec(True)


def exact_reference(x: np.ndarray, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The contract in numpy: x rounded to int16 per row (absmax / 32767, as MatvecInput does),
    int64 dot products, then w_scale * x_scale * float(dot)."""
    absmax = np.abs(x).max(axis=1)
    x_scale = absmax / np.float32(32767)
    inverse = np.divide(np.float32(32767), absmax, out=np.zeros_like(absmax), where=absmax > 0)
    rounded = np.rint(x * inverse[:, None]).astype(np.int64)
    dots = rounded @ weight.astype(np.int64).T
    return scale[None, :] * x_scale[:, None] * dots.astype(np.float32)


def int8_linear(loaded, x, weight, scale):
    return loaded.weight_only_linear(paddle.to_tensor(x), paddle.to_tensor(weight), paddle.to_tensor(scale)).numpy()


@needs_kernels
@pytest.mark.parametrize("rows,k", [(37, 100), (50, 130), (64, 1024), (16, 64), (5, 70), (33, 2 * 64 + 3)])
def test_amx_int8_matvec_gives_the_exact_integer_dots_for_1_to_16_rows(amx, rows, k):
    # rows not a multiple of 16 (the last tile zero-padded), k not of 64 (a tail without tiles)
    rng = np.random.default_rng(rows * k)
    weight = rng.integers(-128, 128, size=(rows, k), dtype=np.int8)
    scale = rng.random(rows).astype(np.float32)
    for n in range(1, 17):
        x = rng.standard_normal((n, k)).astype(np.float32)
        x[n // 2, :] = 0.0  # a row of zeros keeps scale 0
        np.testing.assert_array_equal(int8_linear(amx, x, weight, scale), exact_reference(x, weight, scale))


@needs_kernels
def test_amx_int8_matvec_is_exact_where_int32_sums_would_overflow(amx):
    # -128 times 32767 (low byte 255, high 127) 32,868 times: the lo sums need their blocks
    # (kBlockCols) and the hi * 256 + lo joining needs int64
    k = 32768 + 100
    weight = np.full((17, k), -128, dtype=np.int8)
    weight[1] = 127
    scale = np.ones(17, dtype=np.float32)
    x = np.ones((3, k), dtype=np.float32)
    x[1] = -1.0
    x[2, ::2] = -1.0
    got = int8_linear(amx, x, weight, scale)
    np.testing.assert_array_equal(got, exact_reference(x, weight, scale))
    assert abs(got[0, 0] / (-128 * k) - 1) < 1e-6


def int8_model(head: str):
    return make_fast(copy_model(small_model(seed=3, vocab_size=VOCAB, n_positions=128)), "int8", head_dtype=head)


@needs_kernels
@pytest.mark.parametrize("n", [2, 9, 16])
def test_one_forward_of_n_tokens_gives_the_logits_of_n_single_steps(amx, n):
    # an int8 head too: the fp32 head's float sums do depend on the number of rows
    model = int8_model(head="int8")
    ids = paddle.to_tensor(np.random.default_rng(n).integers(0, VOCAB, (1, 20 + n)), dtype="int64")
    with paddle.no_grad():
        cache = model.new_cache(1, 20 + n)
        model(ids[:, :20], None, cache)
        together = model(ids[:, 20:], None, cache, last_only=False).numpy()
        cache.truncate(20)
        apart = [model(ids[:, 20 + i:21 + i], None, cache, last_only=False).numpy() for i in range(n)]
    np.testing.assert_array_equal(together, np.concatenate(apart, axis=1))


@needs_kernels
def test_int8_greedy_with_prompt_lookup_gives_plain_greedys_tokens_and_logprobs_exactly(amx):
    model = int8_model(head="int8")
    config = GenerationConfig(max_new_tokens=40, logprobs=2, prompt_lookup_num_tokens=8)
    accepted = 0
    for prompt in LOOKUP_PROMPTS:
        alone = plain(model, prompt, config)
        sequence, _, batch = run(model, prompt, config)
        assert sequence.token_ids == alone.token_ids
        assert sequence.token_logprobs == alone.token_logprobs
        accepted += batch.accepted
    assert accepted >= 10


@needs_kernels
def test_turning_amx_off_leaves_the_int8_matvec_to_the_vector_kernel(amx):
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=(40, 300), dtype=np.int8)
    scale = rng.random(40).astype(np.float32)
    x = rng.standard_normal((9, 300)).astype(np.float32)
    amx.use_amx_matvec(False)
    assert amx.amx_matvec_min_rows() == 0
    np.testing.assert_allclose(int8_linear(amx, x, weight, scale), exact_reference(x, weight, scale), rtol=1e-5)
    amx.use_amx_matvec(True)
    assert amx.amx_matvec_min_rows() > 1

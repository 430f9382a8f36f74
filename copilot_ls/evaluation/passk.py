"""The unbiased pass@k estimator of Chen et al. 2021 (the Codex paper), and the summaries built on it.

pass@k = E_problems[ 1 - C(n-c, k) / C(n, k) ]: the chance that at least one of k samples drawn without
replacement from the n generated passes, when c of the n pass. The ratio of binomials is computed as the
product  prod_{i=n-c+1}^{n} (1 - k/i)  so nothing overflows for large n.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for one problem with n samples of which c passed."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k samples per problem (n={n})")
    if n - c < k:
        return 1.0  # every k-subset contains a passing sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given (n, c) per problem."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems to score")
    return sum(values) / len(values)


def top_logprob_pass(samples: Sequence[tuple[float, bool]]) -> bool:
    """Did the sample with the highest mean log-prob pass? (ties: the first one generated)."""
    if not samples:
        raise ValueError("no samples")
    best = max(range(len(samples)), key=lambda i: (samples[i][0], -i))
    return samples[best][1]


def parse_ks(text: str) -> list[int]:
    """'1,10,100' -> [1, 10, 100]; a clear error for anything else."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--k must be a comma-separated list of positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k must be a comma-separated list of positive integers, got {text!r}")
    return ks

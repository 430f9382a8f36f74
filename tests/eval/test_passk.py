"""The pass@k estimator against brute-force enumeration of all k-subsets, and its edge cases."""

from __future__ import annotations

import itertools
import math

import pytest

from copilot_ls.evaluation.passk import mean_pass_at_k, parse_ks, pass_at_k, top_logprob_pass


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them passing) that contain at least one pass."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_brute_force_for_every_c_and_k(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_matches_binomial_formula_for_large_n_without_overflow():
    n, c, k = 200, 13, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert 0.0 < pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)


def test_edge_cases():
    assert pass_at_k(20, 0, 1) == 0.0  # c = 0
    assert pass_at_k(20, 0, 20) == 0.0
    assert pass_at_k(20, 20, 1) == 1.0  # c = n
    assert pass_at_k(20, 15, 10) == 1.0  # n - c < k: every subset has a pass
    assert pass_at_k(20, 1, 20) == 1.0  # k = n and one pass
    assert pass_at_k(20, 5, 1) == pytest.approx(5 / 20)  # pass@1 = c / n


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least k samples"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 0)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_mean_over_problems():
    assert mean_pass_at_k([(4, 0), (4, 4), (4, 2)], 1) == pytest.approx((0 + 1 + 0.5) / 3)


def test_top_logprob_pick():
    assert top_logprob_pass([(-1.0, False), (-0.2, True), (-0.5, False)]) is True
    assert top_logprob_pass([(-0.1, False), (-0.2, True)]) is False
    assert top_logprob_pass([(-0.3, False), (-0.3, True)]) is False  # tie: the first generated


def test_parse_ks():
    assert parse_ks("10,1, 100") == [1, 10, 100]
    for bad in ("", "a", "0,1", "1;2"):
        with pytest.raises(ValueError, match="--k"):
            parse_ks(bad)

"""RDS+'s round robin (arXiv 2503.01807, Algorithm 1) against a brute-force transcription of it."""

import numpy as np
import pytest

from rose_hf.prefilter.keep import keep_count, pair_ranking, round_robin_keep


def brute_force_round_robin(cosines, count, eligible):
    """Each pair's full ranking (cosine descending, then row index), taken in turn, skipping rows already taken."""
    num_rows, num_pairs = cosines.shape
    rankings = [sorted((i for i in range(num_rows) if eligible[i]), key=lambda i: (-cosines[i, j], i))
                for j in range(num_pairs)]  # fmt: skip
    taken = []
    while len(taken) < min(count, int(eligible.sum())):
        for ranking in rankings:
            choice = next((i for i in ranking if i not in taken), None)
            if choice is not None and len(taken) < count:
                taken.append(choice)
    return sorted(taken)


@pytest.mark.parametrize("seed", range(6))
def test_round_robin_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_rows, num_pairs = rng.integers(5, 60), rng.integers(1, 6)
    # Coarse values: many ties, which must go to the lower row index.
    cosines = np.round(rng.uniform(-1, 1, size=(num_rows, num_pairs)), 1).astype(np.float32)
    eligible = rng.uniform(size=num_rows) > 0.2
    for fraction in (0.05, 0.3, 0.5, 1.0):
        count = keep_count(fraction, num_rows)
        expected = brute_force_round_robin(cosines, count, eligible)
        np.testing.assert_array_equal(round_robin_keep(cosines, count, eligible), expected)


def test_round_robin_serves_every_pair():
    # Pair 0 likes rows 0-9 best, pair 1 only row 10: a max-over-pairs ranking would keep rows of pair 0 only.
    cosines = np.zeros((11, 2), np.float32)
    cosines[:10, 0], cosines[:10, 1] = np.linspace(0.99, 0.9, 10), 0.5
    cosines[10] = [0.1, 0.6]
    assert round_robin_keep(cosines, 2).tolist() == [0, 10]


def test_pair_ranking_breaks_ties_by_index_at_the_cut():
    assert pair_ranking(np.array([0.5, 0.9, 0.5, 0.5, 0.1]), 3).tolist() == [1, 0, 2]


def test_keep_count_is_the_ceiling():
    assert keep_count(0.6, 45) == 27  # 0.6 * 45 is 27.000000000000004 in floats
    assert keep_count(0.05, 45) == 3
    assert keep_count(1e-6, 10) == 1
    assert keep_count(1.0, 7) == 7

"""The ranking study (`benchmarks.quality.ranking`): its cosines equal the library's paper score, its round robin and
normalisation equal brute force, and its rule picks what it says on hand-made worlds."""

import numpy as np
import pytest

from benchmarks.quality import ranking
from benchmarks.quality.ranking import CANDIDATES, LESS, TODAY, Cosines, choose_ranking, round_robin


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


class Checkpoint:
    """The two `FeatureStore` checkpoint readers `pair_cosines` uses."""

    def __init__(self, pool, validation, rates):
        self.pool, self.validation, self.meta = pool, validation, {"learning_rates": rates}

    def pool_features(self):
        return self.pool

    def validation_features(self, objective):
        return self.validation[objective]


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    checkpoints = [Checkpoint(unit(rng.normal(size=(50, 12))).astype(np.float16),
                              {o: unit(rng.normal(size=(6, 12))) for o in ("dpo", "sft")}, rates)
                   for rates in ([3e-4, 2e-4], [1e-4])]  # fmt: skip
    subtasks = np.array(["a", "a", "a", "b", "b", "b"])
    return checkpoints, subtasks


def test_pair_cosines_give_the_library_s_paper_score(world):
    from rose_hf.scoring.similarity import checkpoint_weights, score_pool

    checkpoints, subtasks = world
    for objective in ("dpo", "sft"):
        weights = checkpoint_weights([c.meta["learning_rates"] for c in checkpoints])
        expected, _ = score_pool([c.pool for c in checkpoints], [c.validation[objective] for c in checkpoints],
                                 weights, subtasks)  # fmt: skip
        mine = ranking.subtask_score(ranking.pair_cosines(checkpoints, objective), subtasks)
        np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)


def test_round_robin_equals_brute_force_turn_taking():
    rng = np.random.default_rng(1)
    groups, rows = rng.normal(size=(30, 4)), rng.random(30) > 0.2
    scores = round_robin(groups, rows)
    taken, sequence = set(), []
    while len(sequence) < rows.sum():
        for g in range(4):
            free = [z for z in np.flatnonzero(rows) if z not in taken]
            if free:
                best = max(free, key=lambda z: groups[z, g])
                taken.add(best)
                sequence.append(best)
    assert np.isnan(scores[~rows]).all()
    assert list(np.argsort(-np.nan_to_num(scores, nan=-np.inf))[: len(sequence)]) == sequence


def test_standardised_columns_have_zero_mean_and_unit_spread_over_the_ranked_rows():
    rng = np.random.default_rng(2)
    cosines, rows = rng.normal(3.0, 5.0, size=(40, 3)), rng.random(40) > 0.3
    z = ranking.standardised(cosines, rows)
    np.testing.assert_allclose(z[rows].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[rows].std(axis=0), 1.0, atol=1e-12)


def test_every_candidate_ranks_only_the_kept_rows(world):
    checkpoints, subtasks = world
    x = Cosines(ranking.pair_cosines(checkpoints, "dpo"), ranking.pair_cosines(checkpoints, "sft"), subtasks,
                np.ones(50, dtype=bool)).restricted(np.arange(10, 30))  # fmt: skip
    for name, candidate in CANDIDATES.items():
        scores = candidate(x)
        assert np.isfinite(scores[10:30]).all(), name
        assert not np.isfinite(np.delete(scores, np.arange(10, 30))).any(), name


def test_the_mean_rank_is_the_library_s_rank_average(world):
    from rose_hf.scoring.similarity import rank_average

    checkpoints, subtasks = world
    x = Cosines(ranking.pair_cosines(checkpoints, "dpo"), ranking.pair_cosines(checkpoints, "sft"), subtasks,
                np.ones(50, dtype=bool))  # fmt: skip
    expected = rank_average([ranking.subtask_score(x.dpo, subtasks), ranking.subtask_score(x.sft, subtasks)])
    np.testing.assert_allclose(CANDIDATES[TODAY](x), expected, rtol=1e-6)


def test_gate_puts_every_passing_row_above_every_other():
    primary, gate, rows = np.array([5.0, 1.0, 4.0, 3.0]), np.array([False, True, False, True]), np.ones(4, bool)
    assert list(np.argsort(-ranking.gated(primary, gate, rows))) == [3, 1, 0, 2]


def _worlds(figures: dict[str, tuple[float, float]], families=("hh", "dates")):
    """One world per family; figures: candidate -> (relative precision, harmful share); others get LESS's."""
    base = figures[LESS]
    point = {name: dict(zip(("relative_precision", "harmful_share"), figures.get(name, base))) for name in CANDIDATES}
    return [{"family": f, "first_stage": point} for f in families]


def test_the_rule_orders_by_targets_met_before_precision():
    worlds = _worlds({LESS: (0.95, 0.20), TODAY: (0.93, 0.12), "dpo+sft (min rank)": (0.96, 0.05),
                      "sft gated by dpo (top half)": (0.99, 0.15)})  # fmt: skip
    choice = choose_ranking(worlds)
    # the gate is more precise, but only the min rank also halves LESS's harm
    assert choice["best"] == "dpo+sft (min rank)" and choice["replaces_today"]
    assert choice["summary"]["dpo+sft (min rank)"]["num_met"] == 4


def test_today_stays_when_nothing_beats_it():
    worlds = _worlds({LESS: (0.80, 0.20), TODAY: (0.95, 0.05)})
    choice = choose_ranking(worlds)
    assert not choice["replaces_today"]


def test_columns_keep_the_rows_and_take_the_pairs(world):
    checkpoints, subtasks = world
    x = Cosines(ranking.pair_cosines(checkpoints, "dpo"), ranking.pair_cosines(checkpoints, "sft"), subtasks,
                np.arange(50) % 3 > 0)  # fmt: skip
    half = x.columns([0, 3, 4])
    assert half.dpo.shape == (50, 3) and list(half.subtasks) == ["a", "b", "b"]
    np.testing.assert_array_equal(half.sft, x.sft[:, [0, 3, 4]])
    np.testing.assert_array_equal(half.rows, x.rows)

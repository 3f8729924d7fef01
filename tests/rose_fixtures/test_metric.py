"""The `preference_accuracy` evaluate module, loaded offline from its folder, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # loading an evaluate module copies and imports it (a few seconds)


@pytest.fixture()
def metric():
    import evaluate

    from rose_fixtures.metrics import preference_accuracy_path

    return evaluate.load(preference_accuracy_path())


def _pairs(n=257, seed=0):
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(-10, 3, n), rng.normal(-10, 3, n)
    ref_chosen, ref_rejected = rng.normal(-10, 3, n), rng.normal(-10, 3, n)
    rejected[:5] = chosen[:5]  # ties count as wrong
    return chosen, rejected, ref_chosen, ref_rejected


def test_matches_numpy_with_reference(metric):
    chosen, rejected, ref_chosen, ref_rejected = _pairs()
    beta = 0.3
    out = metric.compute(
        chosen_logps=chosen,
        rejected_logps=rejected,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        beta=beta,
    )
    reward_margin = beta * (chosen - ref_chosen) - beta * (rejected - ref_rejected)
    assert out["num_pairs"] == len(chosen)
    assert out["preference_accuracy"] == pytest.approx(np.mean(chosen > rejected), abs=1e-12)
    assert out["mean_margin"] == pytest.approx(np.mean(chosen - rejected), rel=1e-9)
    assert out["reward_accuracy"] == pytest.approx(np.mean(reward_margin > 0), abs=1e-12)
    assert out["mean_reward_margin"] == pytest.approx(np.mean(reward_margin), rel=1e-9)


def test_reference_is_optional_and_batches_accumulate(metric):
    chosen, rejected, _, _ = _pairs(seed=1)
    for start in range(0, len(chosen), 100):
        metric.add_batch(chosen_logps=chosen[start : start + 100], rejected_logps=rejected[start : start + 100])
    out = metric.compute()
    assert set(out) == {"preference_accuracy", "mean_margin", "num_pairs"}
    assert out["preference_accuracy"] == pytest.approx(np.mean(chosen > rejected), abs=1e-12)
    assert out["num_pairs"] == len(chosen)


def test_partial_reference_is_refused(metric):
    metric.add_batch(chosen_logps=[-1.0], rejected_logps=[-2.0], ref_chosen_logps=[-1.0], ref_rejected_logps=[-1.0])
    metric.add_batch(chosen_logps=[-1.0], rejected_logps=[-2.0])
    with pytest.raises(ValueError, match="for every pair, or for none"):
        metric.compute()


def test_trainer_compute_metrics():
    from transformers import EvalPrediction

    from rose_fixtures.evaluation import preference_compute_metrics

    chosen, rejected, ref_chosen, ref_rejected = _pairs(n=64, seed=2)
    compute_metrics = preference_compute_metrics(beta=0.1)
    predictions = np.stack([chosen, rejected, ref_chosen, ref_rejected], axis=1)
    out = compute_metrics(EvalPrediction(predictions=predictions, label_ids=np.zeros(64)))
    assert out["preference_accuracy"] == pytest.approx(np.mean(chosen > rejected), abs=1e-12)
    assert out["reward_accuracy"] == pytest.approx(
        np.mean((chosen - ref_chosen) - (rejected - ref_rejected) > 0), abs=1e-12
    )
    # A Trainer hands over tuples when prediction_step returns several tensors.
    out = compute_metrics(EvalPrediction(predictions=(chosen, rejected), label_ids=np.zeros(64)))
    assert "reward_accuracy" not in out
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(N, 4\)"):
        compute_metrics(EvalPrediction(predictions=predictions[:, :3], label_ids=np.zeros(64)))

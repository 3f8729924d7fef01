"""Scoring methods are objects: what each one answers, checked against the rule written out, and a new method
registered in one place reaching every stage that asks for one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import write_feature_store

from rose_hf import RoseConfig, score_store
from rose_hf.cache.store import STATUS_EMPTY
from rose_hf.features.preconditioner import AdamState
from rose_hf.scoring import methods
from rose_hf.scoring.methods import SCORING_METHODS, PaperScoring, RobustScoring, ScoringMethod, scoring_method
from rose_hf.scoring.similarity import checkpoint_weights

SUBTASKS = ["x", "y", "x", "y"]


def test_registry_is_what_the_config_accepts():
    assert set(SCORING_METHODS) == {"paper", "robust"}
    for name, method in SCORING_METHODS.items():
        assert method.name == name and RoseConfig(scoring=name).scoring_method is method
    with pytest.raises(ValueError, match=r"scoring='nope' is not valid: use one of \['paper', 'robust'\]"):
        RoseConfig(scoring="nope")
    with pytest.raises(ValueError, match="scoring='nope'"):
        scoring_method("nope")


def test_pool_gradient_transforms_are_adams_with_and_without_momentum():
    torch.manual_seed(0)
    m, v, g = torch.randn(7), torch.rand(7), torch.randn(3, 7)
    adam = AdamState(exp_avg=m, exp_avg_sq=v, beta1=0.9, beta2=0.999, eps=1e-8)
    v_next = 0.999 * v + 0.001 * g**2
    m_next = 0.9 * m + 0.1 * g
    torch.testing.assert_close(PaperScoring().pool_gradients(adam, g), m_next / (v_next + 1e-8).sqrt())
    torch.testing.assert_close(RobustScoring().pool_gradients(adam, g), g / (v_next + 1e-8).sqrt())


def test_checkpoints_weights_and_valid_rows_follow_each_methods_rule(tmp_path):
    store, _, _, learning_rates = write_feature_store(tmp_path, SUBTASKS, checkpoints=3)
    checkpoints = store.completed_checkpoints()
    np.testing.assert_array_equal(PaperScoring().checkpoint_weights(checkpoints), checkpoint_weights(learning_rates))
    np.testing.assert_array_equal(RobustScoring().checkpoint_weights(checkpoints), [0.0, 0.0, 1.0])
    # Row 3 has no feature at the first checkpoint: the paper reads it, the robust method does not.
    status = np.load(checkpoints[0].path + "/pool_status.npy")
    status[3] = STATUS_EMPTY
    np.save(checkpoints[0].path + "/pool_status.npy", status)
    assert not PaperScoring().valid_rows(checkpoints)[3] and RobustScoring().valid_rows(checkpoints)[3]
    assert PaperScoring().valid_rows(checkpoints).sum() == 39 and RobustScoring().valid_rows(checkpoints).all()


class FirstCheckpointDot(ScoringMethod):
    """A method defined outside the library: the dot product with the mean DPO feature at the first checkpoint."""

    name = "first_dot"
    last_checkpoint_only = False

    def pool_gradients(self, adam, grads):
        return grads

    def checkpoint_weights(self, checkpoints):
        return np.eye(len(checkpoints))[0]

    def rank(self, inputs, pairs=None, progress=False):
        first = inputs.checkpoints[0]
        target = first.validation_features("dpo").mean(axis=0)
        return (np.asarray(first.pool_features()) @ target).astype(np.float32), {"scoring": self.name}, {}

    def objective_scores(self, inputs, parts):
        return None

    def describe_scores(self, objective, aggregation):
        return "Scores are dot products with the mean DPO feature at the first checkpoint."

    def describe_subtasks(self, objective, aggregation):
        return "Subtasks do not enter the score."


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    store, pool, validation, _ = write_feature_store(tmp_path, SUBTASKS)
    monkeypatch.setitem(methods.SCORING_METHODS, "first_dot", FirstCheckpointDot())
    config = RoseConfig(selection_dir=str(tmp_path), scoring="first_dot", validation_objective="dpo")
    scored = score_store(store, SUBTASKS, config, num_rows=40)
    expected = np.array([sum(float(row[i]) * float(validation[0]["dpo"][:, i].mean()) for i in range(row.size))
                         for row in pool[0].astype(np.float64)])  # fmt: skip
    np.testing.assert_allclose(scored.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scored.weights, [1.0, 0.0])
    assert scored.info["scoring"] == "first_dot" and scored.objective_scores is None
    assert scoring_method("first_dot").describe_scores("dpo", "max").startswith("Scores are dot products")
    paper = score_store(store, SUBTASKS, dataclasses.replace(config, scoring="paper"), num_rows=40)
    assert not np.allclose(paper.scores, scored.scores)


@pytest.mark.parametrize("dpo_weight", [0.0, 0.25, 0.75, 1.0])
def test_dpo_sft_is_the_explicitly_weighted_mean_rank_and_the_weight_keys_the_selection(tmp_path, dpo_weight):
    """`validation_objective="dpo+sft"`: each row's rank under each side (1 = lowest, ties share), divided by the
    number of rows, weighted `dpo_weight` : `1 - dpo_weight`, written out row by row."""
    from rose_hf.cache.keys import selection_key

    store, *_ = write_feature_store(tmp_path, SUBTASKS)
    config = RoseConfig(selection_dir=str(tmp_path), dpo_weight=dpo_weight)
    scored = score_store(store, SUBTASKS, config, num_rows=40)
    dpo, sft = scored.objective_scores
    n = len(dpo)
    for z in range(n):
        rank_dpo = (1 + (dpo < dpo[z]).sum() + ((dpo == dpo[z]).sum() - 1) / 2) / n
        rank_sft = (1 + (sft < sft[z]).sum() + ((sft == sft[z]).sum() - 1) / 2) / n
        assert scored.scores[z] == pytest.approx(dpo_weight * rank_dpo + (1 - dpo_weight) * rank_sft, rel=1e-6)
    other = dataclasses.replace(config, dpo_weight=0.5)
    checkpoints = store.completed_checkpoints()
    assert selection_key(config, checkpoints)["dpo_weight"] == dpo_weight
    assert selection_key(other, checkpoints) != selection_key(config, checkpoints)

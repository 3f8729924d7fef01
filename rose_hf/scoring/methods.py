"""Scoring methods: each is one object that says which warmup checkpoints it needs, how Adam's state transforms a pool
gradient into a feature, and how the cached features become one score per pool row.

`RoseConfig.scoring` names one of `SCORING_METHODS`; everything that depends on the method (the featurizer, the
callback's choice of checkpoints, offline selection, `score_store`) asks the object, so a new method is one new class
here and one line in the registry.

- `"paper"` (`PaperScoring`): the published ROSE ranking (ROSE_METHOD.md, steps 2-5): Adam-preconditioned features
  at every warmup checkpoint, learning-rate-weighted cosine to the validation gradient of each objective
  (`validation_objective`), aggregated over subtasks; `"dpo+sft"` ranks rows by their mean rank under both objectives,
  weighted by `RoseConfig.dpo_weight`.
- `"robust"` (`RobustScoring`): features at the end of the warmup only, with Adam's per-coordinate scaling but not its
  momentum; rows are ranked by their nearest validation chosen answer among those whose DPO alignment is positive
  (`rose_hf.scoring.robust`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..cache.store import STATUS_OK
from .robust import DEMOTE, relevance_and_preference, relevance_and_preference_from_similarities, robust_scores
from .similarity import INVALID_SCORE, checkpoint_weights, rank_average, score_pool, score_similarities

if TYPE_CHECKING:
    import torch

    from ..cache.store import CheckpointFeatures
    from ..features.preconditioner import AdamState

# The cached validation features (`VALIDATION_FEATURES`) each objective scores with; "dpo+sft" is the weighted mean
# rank of the two paper scores (`ScoringInputs.part_weights`).
OBJECTIVE_PARTS = {"dpo": ("dpo",), "sft": ("sft",), "dpo+sft": ("dpo", "sft")}
VALIDATION_OBJECTIVES = tuple(OBJECTIVE_PARTS)


@dataclass
class ScoringInputs:
    """What a scoring method reads from one run's cache.

    Args:
        checkpoints: the completed checkpoints, in step order.
        subtasks: the subtask of each validation pair, in pair order.
        objective: `validation_objective`.
        aggregation: `subtask_aggregation`.
        weights: the method's checkpoint weights.
        valid: `(N,)` rows with a usable gradient at every checkpoint the method reads.
        dpo_weight: `RoseConfig.dpo_weight`, the DPO side's weight when `objective` has two parts.
        relevance, preference: the health check's parts at the last checkpoint (`relevance_and_preference`), which
            the robust ranking reuses; `score_store` computes them once the inputs above are known.
    """

    checkpoints: list[CheckpointFeatures]
    subtasks: list[str]
    objective: str
    aggregation: str
    weights: np.ndarray
    valid: np.ndarray
    dpo_weight: float
    relevance: np.ndarray | None = None
    preference: np.ndarray | None = None

    def part_weights(self) -> list[float]:
        """The weight of each of the objective's parts (`OBJECTIVE_PARTS`) in the rank average."""
        return [self.dpo_weight if part == "dpo" else 1.0 - self.dpo_weight for part in OBJECTIVE_PARTS[self.objective]]

    @property
    def last(self) -> CheckpointFeatures:
        return self.checkpoints[-1]

    def dpo_features(self, pairs: list[int] | None = None) -> np.ndarray | None:
        """The last checkpoint's DPO validation features (None when the objective has no preference side)."""
        if self.objective == "sft":
            return None
        features = self.last.validation_features("dpo")
        return features if pairs is None else features[pairs]

    # --- the two readers of the cache: pool features, or (`store_pool_features=False`) their similarities ---------
    @property
    def pool_features_stored(self) -> bool:
        """Whether the checkpoints hold pool features; otherwise each row's cosine to each validation pair."""
        return self.last.stores_pool_features

    def weighted_cosine_scores(
        self, objective: str, pairs: list[int] | None = None, progress: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """`score_pool` over every checkpoint with the validation features of `objective`, over `pairs` (default
        all), with `weights`, `aggregation` and `valid`: from the pool features, or from their similarities."""
        subtasks = list(self.subtasks) if pairs is None else [self.subtasks[p] for p in pairs]
        settings = dict(aggregation=self.aggregation, valid=self.valid, progress=progress)
        if not self.pool_features_stored:
            similarities = [c.pool_similarities(objective) for c in self.checkpoints]
            return score_similarities(similarities, self.weights, subtasks, pairs=pairs, **settings)
        scales = [c.pool_scales() for c in self.checkpoints]
        chosen = slice(None) if pairs is None else pairs
        return score_pool(
            [c.pool_features() for c in self.checkpoints],
            [c.validation_features(objective)[chosen] for c in self.checkpoints],
            self.weights,
            subtasks,
            row_scales=scales if all(s is not None for s in scales) else None,
            **settings,
        )

    def relevance_and_preference(self, pairs: list[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`relevance_and_preference` at the last checkpoint over `pairs` (default all), with `valid`; no preference
        side under `objective="sft"`."""
        last = self.last
        if not self.pool_features_stored:
            dpo = None if self.objective == "sft" else last.pool_similarities("dpo")
            return relevance_and_preference_from_similarities(last.pool_similarities("sft"), dpo, self.valid, pairs)
        chosen = last.validation_features("sft")
        return relevance_and_preference(
            last.pool_features(), chosen if pairs is None else chosen[pairs], self.dpo_features(pairs), self.valid,
            last.pool_scales(),
        )  # fmt: skip


class ScoringMethod(ABC):
    """One way of turning cached checkpoint features into pool scores."""

    name: ClassVar[str]
    #: Featurize only the end of the warmup (one pool pass) instead of every checkpoint.
    last_checkpoint_only: ClassVar[bool]

    @abstractmethod
    def pool_gradients(self, adam: AdamState, grads: torch.Tensor) -> torch.Tensor:
        """The pool rows' `(B, P)` gradients as this method's features use them, given the checkpoint's Adam state."""

    @abstractmethod
    def checkpoint_weights(self, checkpoints: Sequence[CheckpointFeatures]) -> np.ndarray:
        """`(C,)` weight of each completed checkpoint, summing to 1."""

    def valid_rows(self, checkpoints: Sequence[CheckpointFeatures]) -> np.ndarray:
        """`(N,)` rows with a usable gradient at every checkpoint this method reads."""
        read = checkpoints[-1:] if self.last_checkpoint_only else checkpoints
        valid = np.ones(read[0].meta["num_rows"], dtype=bool)
        for checkpoint in read:
            valid &= checkpoint.pool_status() == STATUS_OK
        return valid

    @abstractmethod
    def rank(
        self, inputs: ScoringInputs, pairs: list[int] | None = None, progress: bool = False
    ) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
        """Scores over the validation pairs `pairs` (default all): `(scores, report, per-objective scores)`."""

    @abstractmethod
    def objective_scores(
        self, inputs: ScoringInputs, parts: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The ranking by the preference side alone and by the relevance side alone, for the health check (None
        without a preference side). `parts` is `rank`'s third output, to reuse what was already scored."""

    # --- what the scores mean, for the report ----------------------------------------------------------------------
    @abstractmethod
    def describe_scores(self, objective: str, aggregation: str) -> str:
        """One or two sentences: what a score is and the range it lies in."""

    def demotes_rows(self, objective: str) -> bool:
        """Whether some rows are pushed below all others as a group (the report's histogram says so)."""
        return False

    @abstractmethod
    def describe_subtasks(self, objective: str, aggregation: str) -> str:
        """How validation subtasks enter the score (the report's per-subtask section)."""


class PaperScoring(ScoringMethod):
    """The published ROSE ranking, bit for bit with `validation_objective="dpo"`."""

    name = "paper"
    last_checkpoint_only = False

    def pool_gradients(self, adam, grads):
        return adam.precondition(grads)

    def checkpoint_weights(self, checkpoints):
        return checkpoint_weights([c.meta["learning_rates"] for c in checkpoints])

    def rank(self, inputs, pairs=None, progress=False):
        parts, reports = {}, {}
        for objective in OBJECTIVE_PARTS[inputs.objective]:
            parts[objective], reports[objective] = self.objective_score(inputs, objective, pairs, progress)
        scores, info = next(iter(parts.values())), next(iter(reports.values()))
        if len(parts) > 1:
            scores = rank_average(list(parts.values()), inputs.part_weights())
            info = {**info, "num_invalid": int((scores == INVALID_SCORE).sum()), "objectives": reports}
        return scores, {**info, "scoring": self.name}, parts

    def objective_score(
        self, inputs: ScoringInputs, objective: str, pairs: list[int] | None = None, progress: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The paper scoring of every cached checkpoint with one validation objective, over `pairs` (default all)."""
        return inputs.weighted_cosine_scores(objective, pairs, progress)

    def objective_scores(self, inputs, parts):
        return tuple(parts[o] if o in parts else self.objective_score(inputs, o)[0] for o in ("dpo", "sft"))

    def describe_scores(self, objective, aggregation):
        cosines = (
            "checkpoint-weighted cosine similarities between each pool row's (preconditioned) training gradient and "
            f"the validation {{}} gradients (the mean over a subtask's pairs, the {aggregation} over subtasks)"
        )
        if objective == "dpo+sft":
            return (
                "Scores are mean normalised ranks: each row's rank among the valid rows, divided by their count, "
                f"under two rankings, by {cosines.format('DPO (preference-loss)')} and by the same with the SFT "
                "(LESS) gradients, averaged with the weight `dpo_weight` on the DPO side. They lie in (0, 1]; 1 is a "
                "row ranked first by both."
            )
        name = "DPO (preference-loss)" if objective == "dpo" else "SFT (LESS: cross-entropy on the chosen answers)"
        return f"Scores are {cosines.format(name)}, so they lie in [-1, 1]."

    def describe_subtasks(self, objective, aggregation):
        side = {"dpo": "DPO", "sft": "SFT", "dpo+sft": "DPO"}[objective]
        text = (
            "Each validation subtask (a group of preference pairs) scores every pool row by the mean cosine "
            f"similarity of its gradient to the subtask's {side} validation gradients; the "
            + ("DPO side's score" if objective == "dpo+sft" else "final score")
            + f" is the {aggregation} over subtasks. *Mean score* is that per-subtask score averaged over the valid "
            "pool rows; *best subtask for* counts the valid rows for which the subtask gives the highest score. "
            "Under `max`, a subtask that is best for few rows barely influences the selection: add pairs for it, or "
            "use `subtask_aggregation=mean`."
        )
        if objective == "dpo+sft":
            text += (" The figures are the DPO side's; the SFT side aggregates the same way, and the final score is "
                     "each row's mean rank under the two, weighted by `dpo_weight`.")  # fmt: skip
        return text


class RobustScoring(ScoringMethod):
    """Relevance to the nearest validation chosen answer, gated by a positive DPO alignment (`rose_hf.scoring.robust`).

    Under it, `validation_objective="dpo+sft"` and `"dpo"` are the same ranking (the SFT side is the relevance)."""

    name = "robust"
    last_checkpoint_only = True

    def pool_gradients(self, adam, grads):
        return adam.scale(grads)

    def checkpoint_weights(self, checkpoints):
        weights = np.zeros(len(checkpoints))
        weights[-1] = 1.0  # the trained end of the warmup
        return weights

    def rank(self, inputs, pairs=None, progress=False):
        if pairs is None:
            relevance, preference = inputs.relevance, inputs.preference
        else:
            relevance, preference = inputs.relevance_and_preference(pairs)
        scores = robust_scores(relevance, preference)
        info = {
            "scoring": self.name,
            "num_rows": len(scores),
            "num_invalid": int((scores == INVALID_SCORE).sum()),
            "num_preferred": None if preference is None else int((preference > 0).sum()),
        }
        return scores, info, {}

    def objective_scores(self, inputs, parts):
        return None if inputs.preference is None else (inputs.preference, inputs.relevance)

    def describe_scores(self, objective, aggregation):
        relevance = (
            "each row's relevance: the highest cosine similarity, at the last warmup checkpoint, between its "
            "(preconditioned) training gradient and the SFT gradient of one validation chosen answer"
        )
        if not self.demotes_rows(objective):
            return f"Scores are {relevance}, so they lie in [-1, 1]."
        return (
            f"Scores are {relevance}, in [-1, 1], for the rows that move the preference the right way (a positive "
            "mean cosine to the validation DPO gradients); every other row is demoted by "
            f"{DEMOTE:g}, into [{-1 - DEMOTE:g}, {1 - DEMOTE:g}], so it ranks below all of those."
        )

    def demotes_rows(self, objective):
        return objective != "sft"  # without a preference side there is nothing to demote by

    def describe_subtasks(self, objective, aggregation):
        return ("Robust scoring has no per-subtask step: a row's relevance is its closest validation chosen answer "
                "over all pairs, whichever subtask it belongs to.")  # fmt: skip


SCORING_METHODS: dict[str, ScoringMethod] = {method.name: method for method in (PaperScoring(), RobustScoring())}


def scoring_method(name: str) -> ScoringMethod:
    """The scoring method registered under `name` (`RoseConfig.scoring`)."""
    if name not in SCORING_METHODS:
        raise ValueError(f"scoring={name!r} is not valid: use one of {list(SCORING_METHODS)}.")
    return SCORING_METHODS[name]

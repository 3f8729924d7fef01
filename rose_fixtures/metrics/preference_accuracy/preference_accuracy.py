"""Pairwise preference accuracy of a language model, and the DPO implicit-reward accuracy against a reference model.

An `evaluate` metric module, loadable offline from its folder:
```
python -c "import evaluate; from rose_fixtures.metrics import preference_accuracy_path; \
m = evaluate.load(preference_accuracy_path()); print(m.compute(chosen_logps=[-1.0], rejected_logps=[-2.0]))"
```
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For each preference pair (x, y_w, y_l), given the policy's summed completion log-probabilities
`chosen_logps = log p(y_w|x)` and `rejected_logps = log p(y_l|x)`:

- `preference_accuracy`: share of pairs with `chosen_logps > rejected_logps` (ties count as wrong);
- `mean_margin`: mean of `chosen_logps - rejected_logps`.

With the reference model's log-probabilities too (`ref_chosen_logps`, `ref_rejected_logps`; for DPO the model
before training), the DPO implicit reward `r(x, y) = beta * (log p(y|x) - log p_ref(y|x))` gives:

- `reward_accuracy`: share of pairs with `r(x, y_w) - r(x, y_l) > 0`, i.e. the pair's log-prob margin grew over
  the reference's (TRL's `rewards/accuracies`);
- `mean_reward_margin`: mean of `r(x, y_w) - r(x, y_l)`.

The reference columns are optional; without them only the first two values are returned.
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_logps (`list` of `float`): summed completion log-probabilities of the chosen responses under the policy.
    rejected_logps (`list` of `float`): same for the rejected responses.
    ref_chosen_logps (`list` of `float`, optional): chosen log-probabilities under the reference model.
    ref_rejected_logps (`list` of `float`, optional): rejected log-probabilities under the reference model.
    beta (`float`, optional, default 0.1): DPO beta, scales `mean_reward_margin` (the accuracy does not depend on it).

Returns:
    preference_accuracy (`float`), mean_margin (`float`), num_pairs (`int`), and with the reference columns
    reward_accuracy (`float`) and mean_reward_margin (`float`).

Examples:
    >>> metric = evaluate.load(preference_accuracy_path())  # rose_fixtures.metrics.preference_accuracy_path
    >>> metric.compute(chosen_logps=[-1.0, -3.0], rejected_logps=[-2.0, -2.5],
    ...                ref_chosen_logps=[-2.0, -3.0], ref_rejected_logps=[-2.0, -2.0], beta=0.5)
    {'preference_accuracy': 0.5, 'mean_margin': 0.25, 'num_pairs': 2, 'reward_accuracy': 1.0, 'mean_reward_margin': 0.375}
"""

_CITATION = """
@inproceedings{wu2025rose,
  title={ROSE: A Reward-Oriented Data Selection Framework for LLM Task-Specific Instruction Tuning},
  author={Wu, Yang and others},
  booktitle={Findings of EMNLP},
  year={2025}
}
"""

_REQUIRED = ("chosen_logps", "rejected_logps")
_OPTIONAL = ("ref_chosen_logps", "ref_rejected_logps")


def _fill_optional(kwargs: dict) -> dict:
    # `evaluate` needs every feature column in every batch; absent reference columns become nulls, which `_compute`
    # reads as "no reference".
    if kwargs.get("chosen_logps") is None:
        return kwargs
    size = len(kwargs["chosen_logps"])
    return {**kwargs, **{name: [None] * size for name in _OPTIONAL if kwargs.get(name) is None}}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PreferenceAccuracy(evaluate.Metric):
    """Preference and DPO reward accuracy from summed completion log-probabilities."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({name: datasets.Value("float64") for name in _REQUIRED + _OPTIONAL}),
            reference_urls=["https://arxiv.org/abs/2412.00631"],
        )

    # The three entry points accept the reference columns as optional; `evaluate` itself would require them.
    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one pair: `chosen_logps`, `rejected_logps` and optionally the two `ref_*` values."""
        for name in _OPTIONAL:
            kwargs.setdefault(name, None)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of pairs: `chosen_logps`, `rejected_logps` and optionally the two `ref_*` columns."""
        return super().add_batch(predictions=predictions, references=references, **_fill_optional(kwargs))

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the accuracies over the pairs passed here and those added before."""
        return super().compute(predictions=predictions, references=references, **_fill_optional(kwargs))

    def _compute(self, chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, beta=0.1):
        chosen = np.asarray(chosen_logps, dtype=np.float64)
        rejected = np.asarray(rejected_logps, dtype=np.float64)
        if chosen.size == 0:
            raise ValueError("preference_accuracy got no pairs: pass at least one chosen/rejected log-prob pair.")
        if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
            raise ValueError("chosen_logps/rejected_logps hold NaN or inf: check the log-probabilities passed in.")
        margin = chosen - rejected
        result = {
            "preference_accuracy": float(np.mean(margin > 0)),
            "mean_margin": float(np.mean(margin)),
            "num_pairs": int(chosen.size),
        }
        # None (an absent reference) becomes NaN here.
        ref_chosen = np.asarray([np.nan] * chosen.size if ref_chosen_logps is None else ref_chosen_logps, dtype=float)
        ref_rejected = np.asarray(
            [np.nan] * chosen.size if ref_rejected_logps is None else ref_rejected_logps, dtype=float
        )
        present = np.isfinite(ref_chosen) & np.isfinite(ref_rejected)
        if present.any() and not present.all():
            raise ValueError(
                f"Reference log-probabilities are given for {int(present.sum())} of {chosen.size} pairs: pass "
                "ref_chosen_logps and ref_rejected_logps for every pair, or for none."
            )
        if present.all():
            reward_margin = beta * (margin - (ref_chosen - ref_rejected))
            result["reward_accuracy"] = float(np.mean(reward_margin > 0))
            result["mean_reward_margin"] = float(np.mean(reward_margin))
        return result

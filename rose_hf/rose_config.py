"""Configuration of ROSE data selection, with the paper's defaults."""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .cache.store import NUMPY_DTYPES
from .features.dpo import check_loss_type
from .features.projection import PROJECTION_KINDS
from .scoring.methods import SCORING_METHODS, VALIDATION_OBJECTIVES, ScoringMethod
from .scoring.similarity import AGGREGATIONS

PRECONDITIONERS = ("adam", "sgd")
# Old names of fields that `SFTConfig` also has, accepted with a FutureWarning for one release: a parser given both
# dataclasses could not tell them apart. On the command line and in recipes the old names were spelled `rose_<name>`.
DEPRECATED_NAMES = {
    "output_dir": "selection_dir",
    "loss_type": "dpo_loss_type",
    "max_length": "feature_max_length",
    "seed": "warmup_seed",
}


@dataclass
class RoseConfig:
    r"""
    Configuration for [`RoseDataSelector`] and [`RoseTrainer`].

    Defaults follow the ROSE paper (Wu et al., 2025): DPO sigmoid loss with beta 0.1 on the validation pairs, Adam
    preconditioning, 8192-dimensional projection with seed 0, max over subtasks, top 5% of the pool, 5% warmup
    slice. Two deliberate differences:
    - the projection is a sparse JL sketch (`"sjlt"`) rather than the paper's dense Rademacher matrix, which for a 7B
      LoRA (134M x 8192 entries) can be neither stored nor regenerated per batch; the sketch preserves the ranking at
      a fraction of the cost;
    - rows are ranked by their weighted mean rank under the DPO (ROSE, weight `dpo_weight` = 0.75) and the SFT
      (LESS, 0.25) validation gradients (`validation_objective="dpo+sft"`), from the same features: a row must both
      move the preference the right way and look like the chosen answers. `validation_objective="dpo"` is the paper's
      ranking, bit for bit.

    Every field has a name of its own, so `RoseConfig` parses next to `trl.SFTConfig` and `trl.ModelConfig` (e.g.
    `rose-hf train --config recipe.yaml`). The old names `output_dir`, `loss_type`, `max_length` and `seed` (on the
    command line `rose_output_dir`, ...) still work for one release, with a `FutureWarning`; they are now
    `selection_dir`, `dpo_loss_type`, `feature_max_length` and `warmup_seed`.

    Example:
    ```python
    >>> config = RoseConfig(selection_dir="rose", selection_fraction=0.1)
    ```
    """

    selection_dir: str = field(
        default="rose_output",
        metadata={"help": "Folder for the feature cache, scores, selection and report (one run per folder)."},
    )
    scoring: str = field(
        default="paper",
        metadata={
            "help": "'paper' (the published ranking: learning-rate-weighted cosine to the DPO gradient over every "
            "warmup checkpoint, bit-for-bit) or 'robust' (rose_hf's: features at the end of the warmup with Adam's "
            "scaling but not its momentum, rows ranked by their nearest validation chosen answer among those whose "
            "DPO alignment is positive; one pool pass instead of one per checkpoint, the same precision on the "
            "scoring but more harmful rows)."
        },
    )
    validation_objective: str = field(
        default="dpo+sft",
        metadata={
            "help": "Loss whose gradient on the validation set defines the target: 'dpo+sft' (default: each row's "
            "mean rank under the two below, weighted by `dpo_weight`, from the same features at no extra cost; a row "
            "must both move the preference the right way and look like the chosen answers), 'dpo' (the paper's "
            "ROSE: preference loss on (prompt, chosen, rejected)) or 'sft' (LESS: cross-entropy on (prompt, chosen)). "
            "Under scoring='robust', which gates SFT relevance by DPO preference, 'dpo+sft' and 'dpo' are the same."
        },
    )
    dpo_weight: float = field(
        default=0.75,
        metadata={
            "help": "Under validation_objective='dpo+sft', the DPO side's weight in the rank average, in [0, 1] (the "
            "SFT side gets the rest). 0.75 was chosen over 0.5 (the plain mean rank of earlier releases) and 13 other "
            "rankings on four real-model families, Anthropic HH among them (docs/benchmarks.md)."
        },
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta, as in `trl.DPOConfig`."})
    dpo_loss_type: str = field(
        default="sigmoid",
        metadata={"help": "DPO loss type, as in `trl.DPOConfig` (those with a per-pair form: sigmoid, hinge, ipo...)."},
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "DPO label smoothing (robust/exo_pair losses), as in `trl.DPOConfig`."}
    )
    projection: str = field(
        default="sjlt",
        metadata={
            "help": "Random projection of gradients: 'sjlt' (sparse count-sketch: the ranking of the dense one at a "
            "fraction of the cost, and the only one feasible for a 7B LoRA), "
            "'rademacher' (dense +-1, the paper's TRAK projection), or 'none' (exact gradients)."
        },
    )
    projection_dim: int = field(
        default=8192,
        metadata={"help": "Projected dimension. When the LoRA has at most this many parameters, exact gradients are "
                  "stored instead."},
    )
    projection_seed: int = field(default=0, metadata={"help": "Seed of the random projection (same on every process)."})
    preconditioner: str = field(
        default="adam",
        metadata={"help": "'adam': Adam-preconditioned gradients from the warmup optimizer state (ROSE/LESS); "
                  "'sgd': raw gradients."},
    )
    subtask_aggregation: str = field(
        default="max",
        metadata={"help": "How per-subtask mean similarities combine into one score: 'max' (paper) or 'mean'."},
    )
    selection_fraction: float | None = field(
        default=0.05, metadata={"help": "Fraction of the pool to select, in (0, 1]. Ignored if selection_size is set."}
    )
    selection_size: int | None = field(
        default=None, metadata={"help": "Number of pool examples to select (overrides selection_fraction)."}
    )
    prefilter_fraction: float | None = field(
        default=0.2,
        metadata={"help": "Forward-only first stage: keep this fraction of the pool, in (0, 1], by RDS+ similarity "
                  "of the base model's mean-pooled hidden states to the validation pairs (round robin over pairs), "
                  "and compute gradient features only for those rows; the others are never selected. Default 0.2: "
                  "the whole selection in about one pool-epoch at the paper's warmup, at the old default's precision "
                  "or better (docs/benchmarks.md, the cost frontier). Raise it where the pool's other rows are of the "
                  "target's own kind (dialogue among dialogue). None: no first stage, the paper's method."},
    )
    num_feature_checkpoints: int | None = field(
        default=None,
        metadata={"help": "Compute gradient features at this many of the warmup's saves, evenly spaced and ending "
                  "with the last (2 of 4 saves: the 2nd and the 4th), each weighted by the learning rates since the "
                  "save before it; every other save costs nothing. None (default): every save, the paper's method."},
    )
    warmup_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of the pool used for the warmup LoRA training (RoseTrainer)."}
    )
    feature_batch_size: int = field(
        default=16, metadata={"help": "Examples per forward/backward pass when computing gradient features."}
    )
    feature_dtype: str = field(
        default="float16",
        metadata={"help": "Storage of pool features: 'float16' (paper), 'float32', or 'int8' (per-row scale, 2x "
                  "smaller than float16)."},
    )
    store_pool_features: bool = field(
        default=True,
        metadata={"help": "Store the pool's projected gradients at every checkpoint (2 bytes x projection_dim per row "
                  "in float16). False keeps only each row's similarity to each validation pair (4 bytes x pairs x 2 "
                  "objectives): every validation_objective, subtask_aggregation and budget stays rescorable, but "
                  "scoring NEW validation pairs needs the pool features, so it needs the features computed again."},
    )
    chunk_size: int = field(
        default=1024,
        metadata={"help": "Pool rows per resumable chunk: a killed run redoes at most one chunk per process."},
    )
    feature_max_length: int | None = field(
        default=2048,
        metadata={"help": "Truncate pool and validation sequences to this many tokens when computing features "
                  "(paper: 2048)."},
    )
    warmup_seed: int = field(default=0, metadata={"help": "Seed of the warmup slice (RoseTrainer)."})
    final_training: str = field(
        default="lora",
        metadata={"help": "RoseTrainer's final stage on the selection: 'lora' (a fresh adapter, paper) or 'full' "
                  "(full fine-tuning of the base model)."},
    )
    final_num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "Epochs of RoseTrainer's final stage (None: the SFTConfig's num_train_epochs, as in the "
                  "paper, which trains both stages alike). A 5% selection often wants more epochs than the warmup."},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Discard a cache in selection_dir written for another run, instead of refusing to mix."},
    )
    source_column: str | None = field(
        default="source",
        metadata={"help": "Pool column naming each example's data source, for the report (ignored if absent)."},
    )
    report: bool = field(default=True, metadata={"help": "Write report.md with plots after selection."})

    def __post_init__(self):
        # One rule for every field, from Python as from the command line: the value HfArgumentParser would parse.
        # The annotations as written: HfArgumentParser replaces `Field.type` in place (`int | None` by `int`) once a
        # parser has been built for the class, so `f.type` depends on what ran before.
        written = {name: text for klass in reversed(type(self).__mro__) for name, text in
                   getattr(klass, "__annotations__", {}).items()}  # fmt: skip
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), written.get(f.name, f.type)))
        _choice("scoring", self.scoring, tuple(SCORING_METHODS))
        _choice("validation_objective", self.validation_objective, VALIDATION_OBJECTIVES)
        _choice("projection", self.projection, PROJECTION_KINDS)
        _choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        _choice("subtask_aggregation", self.subtask_aggregation, AGGREGATIONS)
        _choice("feature_dtype", self.feature_dtype, tuple(NUMPY_DTYPES))
        _choice("final_training", self.final_training, ("lora", "full"))
        try:
            check_loss_type(self.dpo_loss_type)
        except ValueError as error:  # its message names the argument `loss_type`; here the field is dpo_loss_type
            raise ValueError(f"dpo_{error}") from None
        if not 0.0 <= self.dpo_weight <= 1.0:
            raise ValueError(
                f"dpo_weight={self.dpo_weight} must be in [0, 1]: the DPO side's share of the 'dpo+sft' rank average "
                "(0.5 weighs both sides alike; 1 is the DPO ranking, 0 the SFT one)."
            )
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta} must be > 0 (TRL's and the paper's default is 0.1).")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5).")
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim={self.projection_dim} must be a positive integer (paper: 8192).")
        if self.selection_size is not None:
            if self.selection_size < 1:
                raise ValueError(f"selection_size={self.selection_size} must be >= 1, or None to use a fraction.")
        elif self.selection_fraction is None or not 0 < self.selection_fraction <= 1:
            raise ValueError(
                f"selection_fraction={self.selection_fraction} must be in (0, 1] (paper: 0.05), or set "
                "selection_size to a number of examples."
            )
        if self.prefilter_fraction is not None:
            _check_prefilter(self.prefilter_fraction, self.selection_fraction, self.selection_size)
        if self.num_feature_checkpoints is not None and (
            isinstance(self.num_feature_checkpoints, bool) or not isinstance(self.num_feature_checkpoints, int)
            or self.num_feature_checkpoints < 1
        ):
            raise ValueError(
                f"num_feature_checkpoints={self.num_feature_checkpoints!r} must be a positive integer (e.g. 2: "
                "features at the middle and the last of the warmup's saves), or None for every save (the paper)."
            )
        if self.final_num_train_epochs is not None and not self.final_num_train_epochs > 0:
            raise ValueError(
                f"final_num_train_epochs={self.final_num_train_epochs} must be > 0, or None to train the final stage "
                "for the SFTConfig's num_train_epochs."
            )
        if not 0 < self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in (0, 1] (paper: 0.05).")
        for name in ("feature_batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.feature_max_length is not None and self.feature_max_length < 2:
            raise ValueError(
                f"feature_max_length={self.feature_max_length} must be >= 2 tokens, or None for no truncation."
            )
        if not self.selection_dir:
            raise ValueError("selection_dir is empty: name a folder for the cache and the selection.")

    @property
    def scoring_method(self) -> ScoringMethod:
        """The object behind `scoring` (`rose_hf.scoring.methods`)."""
        return SCORING_METHODS[self.scoring]

    def budget(self) -> dict[str, Any]:
        """The budget as `select_top` takes it: `selection_size` when set (it overrides the fraction)."""
        if self.selection_size is not None:
            return {"size": self.selection_size}
        return {"fraction": self.selection_fraction}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deprecated_name(old: str, new: str) -> property:
    """`config.<old>`, read or set, as `config.<new>` with a FutureWarning (transformers' habit for renames)."""

    def get(self):
        warnings.warn(_renamed(old, new), FutureWarning, stacklevel=2)
        return getattr(self, new)

    def set(self, value):
        warnings.warn(_renamed(old, new), FutureWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated: use `{new}`.")


def _renamed(old: str, new: str, spelling: str | None = None) -> str:
    return (
        f"RoseConfig's `{spelling or old}` is deprecated and will be removed in the next release: use `{new}` "
        f"(renamed because trl.SFTConfig has a field `{old}` too)."
    )


def rename_deprecated(kwargs: dict[str, Any], prefix: str = "", stacklevel: int = 3) -> dict[str, Any]:
    """`kwargs` with each deprecated RoseConfig name (`prefix` + old name) replaced by its new name, warning for each.

    Raises:
        ValueError: both the old and the new name of a field are given.
    """
    kwargs = dict(kwargs)
    for old, new in DEPRECATED_NAMES.items():
        spelling = prefix + old
        if spelling in kwargs:
            if new in kwargs:
                raise ValueError(f"Both `{spelling}` and `{new}` are given: `{spelling}` is the deprecated name of "
                                 f"`{new}`; keep `{new}` only.")  # fmt: skip
            warnings.warn(_renamed(old, new, spelling), FutureWarning, stacklevel=stacklevel)
            kwargs[new] = kwargs.pop(spelling)
    return kwargs


def _accept_deprecated_names(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **rename_deprecated(kwargs))

    return __init__


# The old names are not fields (a parser of RoseConfig and SFTConfig would see them twice), only a keyword of the
# constructor and properties.
RoseConfig.__init__ = _accept_deprecated_names(RoseConfig.__init__)
for _old, _new in DEPRECATED_NAMES.items():
    setattr(RoseConfig, _old, _deprecated_name(_old, _new))


_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")  # HfArgumentParser's string_to_bool


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """`value` as the type of the field (`annotation`, e.g. `"int | None"`), as the command line would parse it.

    A number written as a string (`"8192"`, `"1e-3"`) becomes that number; an int field takes integers only (not
    2.5, not True), a float field finite numbers, a bool field booleans or true/false strings, a str field strings
    (or paths). Anything else is a `ValueError` naming the field.
    """
    parts = [part.strip() for part in str(annotation).split("|")]
    kind = next(part for part in parts if part != "None")
    expected = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}.get(kind)
    if value is None:
        if "None" in parts or expected is None:
            return value
        raise ValueError(f"{name}=None is not allowed: {name} must be {expected}.")
    text = value.strip() if isinstance(value, str) else None
    if kind == "int":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        try:
            return int(text) if text is not None else _not(name, value, expected)
        except ValueError:
            pass
        try:  # a whole number is what is missing: show the nearest one
            nearest = int(float(text if text is not None else value)) if not isinstance(value, bool) else None
        except (TypeError, ValueError, OverflowError):
            nearest = None
        return _not(name, value, expected + (f", e.g. {name}={nearest}" if nearest is not None else ""))
    if kind == "float":
        number = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value)
        elif text is not None:
            try:
                number = float(text)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            return _not(name, value, expected)
        return number
    if kind == "bool":
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        return _not(name, value, expected)
    if kind == "str":
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value if isinstance(value, str) else _not(name, value, expected)
    return value


def _not(name: str, value: Any, expected: str):
    raise ValueError(f"{name}={value!r} ({type(value).__name__}) is not valid: {name} must be {expected}.")


def _check_prefilter(fraction: float, selection_fraction: float | None, selection_size: int | None) -> None:
    if not 0 < fraction <= 1:
        raise ValueError(
            f"prefilter_fraction={fraction} must be in (0, 1] (e.g. 0.2 keeps a fifth of the pool for the gradient "
            "features), or None to run without a prefilter."
        )
    if selection_size is None and selection_fraction is not None and selection_fraction > fraction:
        raise ValueError(
            f"prefilter_fraction={fraction} keeps fewer rows than selection_fraction={selection_fraction} selects: "
            "raise `prefilter_fraction` to at least `selection_fraction`, lower `selection_fraction`, or set "
            "`prefilter_fraction=None` (no first stage)."
        )


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid: use one of {list(allowed)}.")

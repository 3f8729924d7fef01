"""What invalidates a cache: the key of every cached stage, in one file.

Each stage records its key with `rose_hf.cache.record.StageRecord` and compares it on the next start:

| stage | record | key | when it differs |
|---|---|---|---|
| feature run | `<selection_dir>/run.json` | `feature_run_key`: the pool's and the pairs' contents, the pool size, the adapter's configuration, the tokenizer's vocabulary, which tokens carry the pool's loss, `FEATURE_SETTINGS` (`store_pool_features` included: a store of pool features and one of similarities are never read as each other), and with a prefilter its fraction and kept rows | refused (`CacheMismatchError`); `overwrite=True` discards the whole cache |
| prefilter | `prefilter/key.json` | `prefilter_key`: the pool's and the pairs' contents, the pool size, the base model, the tokenizer's vocabulary, `feature_max_length`, `chunk_size` and the representation | refused; `overwrite=True` computes it again |
| checkpoint features | `features/checkpoint-<step>/fingerprint.json` | `checkpoint_key`: the adapter weights, the Adam moments and the base model at that step | discarded and recomputed, with a warning naming what changed |
| selection | `selection.json`, field `args` | `selection_key`: the budget, the scoring method, the validation objective and `dpo_weight`, the aggregation, the checkpoints and their keys | scored again (seconds) |
| RoseTrainer warmup | `warmup/STAGE_INPUTS.json` | `warmup_key`: the base model, the adapter's configuration, the warmup rows, the warmup's training arguments, and the feature run's data and settings | refused; `overwrite=True` redoes the warmup and clears its features |
| RoseTrainer final | `final/STAGE_INPUTS.json` | `final_key`: the selected rows, `final_training`, `final_num_train_epochs` | refused; `overwrite=True` redoes it |

Not in any feature key, because the cache serves every value: `validation_objective` (both validation features are
cached at every checkpoint), `dpo_weight`, `subtask_aggregation` and the budget (scoring only), `feature_batch_size` (the same
features up to float rounding), `report` and `source_column`. Nor in the prefilter's key: `prefilter_fraction` (every row's cosine to every pair
is cached, so another fraction only keeps other rows; those rows key the feature run) and `feature_batch_size`.

Data is keyed on its content, model states on the bytes of their tensors (`rose_hf.cache.fingerprint`), so the same
rows or weights loaded another way give the same key, in every process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .fingerprint import base_model_fingerprint, json_hash, state_fingerprint, warmup_arguments

if TYPE_CHECKING:
    from torch import nn

    from ..features.preconditioner import AdamState
    from ..rose_config import RoseConfig
    from .store import CheckpointFeatures

# The RoseConfig fields the cached features depend on, as recorded in run.json: {recorded name: RoseConfig field}.
# The recorded names are part of the cache's format and outlive renames of the fields.
FEATURE_SETTINGS = {
    "scoring": "scoring",  # the method's transform of pool gradients (rose_hf.scoring.methods)
    "beta": "beta",
    "loss_type": "dpo_loss_type",
    "label_smoothing": "label_smoothing",
    "projection": "projection",
    "projection_dim": "projection_dim",
    "projection_seed": "projection_seed",
    "preconditioner": "preconditioner",
    "max_length": "feature_max_length",
    "feature_dtype": "feature_dtype",
    "chunk_size": "chunk_size",
    "store_pool_features": "store_pool_features",  # pool features, or only their similarities to the pairs
}
# A field added here after caches were written needs its old value in `rose_hf.cache.store.RECORDED_DEFAULTS`.
# Adapter-config fields that say where the weights came from or how they run, not what the features are.
ADAPTER_RUNTIME_FIELDS = ("base_model_name_or_path", "revision", "inference_mode", "runtime_config")


def feature_settings(config: RoseConfig) -> dict[str, Any]:
    """The feature settings of `config`, under their recorded names."""
    return {recorded: getattr(config, field) for recorded, field in FEATURE_SETTINGS.items()}


def adapter_config_hash(adapters: Mapping[str, Any]) -> str:
    """Hash of adapter configurations (`{adapter name: PeftConfig or dict}`, as `model.peft_config`), without the
    runtime fields."""
    described = {}
    for name, config in adapters.items():
        fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        described[name] = {k: v for k, v in fields.items() if k not in ADAPTER_RUNTIME_FIELDS}
    return json_hash(described)


def data_key(fingerprints: Mapping[str, str], pool_size: int, config: RoseConfig) -> dict[str, Any]:
    """The part of the feature run's key known before any model: the data's contents and the feature settings.

    Args:
        fingerprints: `{"pool_fingerprint", "validation_fingerprint"}` (`fingerprint.pool_fingerprint`,
            `fingerprint.preference_fingerprint`).
    """
    return {
        "pool_fingerprint": fingerprints["pool_fingerprint"],
        "pool_size": pool_size,
        "validation_fingerprint": fingerprints["validation_fingerprint"],
        **feature_settings(config),
        # Only when set, so that a run without a prefilter keeps the key (and the cache) it had before the field.
        **({"prefilter_fraction": config.prefilter_fraction} if config.prefilter_fraction is not None else {}),
    }


def feature_run_key(
    data: dict[str, Any],
    adapters: Mapping[str, Any],
    tokenizer,
    loss_tokens: dict[str, Any],
    prefilter: dict[str, Any] | None = None,
):
    """The key of a feature cache (`run.json`): `data_key`, the adapter configuration, the tokenizer's vocabulary,
    and which tokens carry the pool's loss (`assistant_only_loss`, `completion_only_loss`); with a prefilter, the rows
    it kept (`rose_hf.prefilter.stage.kept_key`), whose features are the only ones cached."""
    return {
        "adapter_config_hash": adapter_config_hash(adapters),
        "tokenizer_hash": json_hash(sorted(tokenizer.get_vocab().items())),
        **loss_tokens,
        **data,
        **({"prefilter": prefilter} if prefilter is not None else {}),
    }


def prefilter_key(fingerprints: Mapping[str, str], pool_size: int, base: dict[str, Any], tokenizer, config: RoseConfig):
    """The key of the prefilter's cache: the data, the base model (`fingerprint.base_model_fingerprint`), the
    tokenizer's vocabulary, the truncation, the chunking and the representation (`prefilter.representations`)."""
    from ..prefilter.representations import REPRESENTATION

    return {
        "pool_fingerprint": fingerprints["pool_fingerprint"],
        "pool_size": pool_size,
        "validation_fingerprint": fingerprints["validation_fingerprint"],
        "base_model": base,
        "tokenizer_hash": json_hash(sorted(tokenizer.get_vocab().items())),
        "max_length": config.feature_max_length,
        "chunk_size": config.chunk_size,
        "representation": REPRESENTATION,
    }


def checkpoint_key(model: nn.Module, adam: AdamState | None, base: dict[str, Any]) -> dict[str, Any]:
    """The key of one checkpoint's features: `{"adapter", "optimizer", "base"}` hashes (`state_fingerprint`)."""
    return state_fingerprint(model, adam, base)


def selection_key(config: RoseConfig, checkpoints: Sequence[CheckpointFeatures]) -> dict[str, Any]:
    """The key of a finished selection: its settings, and the checkpoints scored with their own keys, so that
    recomputed features never meet a selection made from others."""
    return {
        "selection_fraction": config.selection_fraction,
        "selection_size": config.selection_size,
        "scoring": config.scoring,
        "validation_objective": config.validation_objective,
        "dpo_weight": config.dpo_weight,
        "subtask_aggregation": config.subtask_aggregation,
        "steps": [c.step for c in checkpoints],
        "fingerprints": [c.meta.get("fingerprint") for c in checkpoints],
    }


def model_key(model: nn.Module) -> dict[str, Any]:
    """What identifies a model object (not a name): its base model (config and sampled weights,
    `fingerprint.base_model_fingerprint`; collective under ZeRO-3) and its adapters' configuration."""
    return {"base_model": base_model_fingerprint(model),
            "adapter_config_hash": adapter_config_hash(getattr(model, "peft_config", {}))}  # fmt: skip


def warmup_key(model: Any, peft_config: Any, indices: list[int], training_args: Any, data: dict[str, Any]):
    """The key of RoseTrainer's warmup stage.

    Args:
        model: what identifies the base model: its name or path, or `model_key` of a model object.
        peft_config: the warmup's LoRA configuration.
        indices: the pool rows of the warmup slice.
        training_args: the warmup's `SFTConfig` (`fingerprint.warmup_arguments` picks what shapes its trajectory).
        data: `data_key` of the selection the warmup feeds.
    """
    return {
        "model": model,
        "adapter_config_hash": adapter_config_hash({"default": peft_config}),
        "warmup_indices": indices,
        "training_args": warmup_arguments(training_args),
        **data,
    }


def final_key(selected_indices: list[int], config: RoseConfig) -> dict[str, Any]:
    """The key of RoseTrainer's final stage: the rows it trains on and how."""
    return {
        "selected_indices": selected_indices,
        "final_training": config.final_training,
        "final_num_train_epochs": config.final_num_train_epochs,
    }

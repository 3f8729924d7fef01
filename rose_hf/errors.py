"""The errors callers catch by name. Each subclasses `ValueError` (or `OSError` for disk writes), so code written
against the plain types keeps working; the message always names the field and the fix."""

from __future__ import annotations


class CacheMismatchError(ValueError):
    """A cache, or a stage folder, holds work from a run with other inputs; nothing was changed.

    `fields` names the inputs that differ. Fix: the same inputs, `RoseConfig(overwrite=True)` to discard the old
    work, or another folder.
    """

    def __init__(self, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.fields = list(fields or [])


class UnsupportedAdapterError(ValueError):
    """The model's adapter has no per-example LoRA gradients rose_hf can compute (no LoRA, DoRA, embedding LoRA,
    LoRA biases, non-linear LoRA parts)."""


class UnsupportedOptimizerError(ValueError):
    """The warmup optimizer keeps no Adam moments to precondition with (SGD, Adafactor, Lion, 8-bit states that are
    not blockwise...)."""


class UnsupportedDistributedError(ValueError):
    """A distributed setup whose parameter sharding hides a LoRA weight's gradients or moments (FSDP1)."""


class CacheWriteError(OSError):
    """A cache write failed in a way the user can fix (permissions, a full disk); the cache is left consistent."""


class DiskSpaceError(CacheWriteError):
    """The disk cannot hold the selection's plan (`rose_hf.plan.SelectionPlan`); refused before anything was written.

    Fix: `feature_dtype="int8"`, a smaller `projection_dim`, `prefilter_fraction`, `store_pool_features=False`, or a
    `selection_dir` with more room.
    """

"""rose_hf: ROSE task-specific data selection for the Hugging Face training stack.

Add `RoseDataSelector` to a LoRA warmup run, or let `RoseTrainer` run warmup -> selection -> final training.
The lower-level names score a finished run's cache again (`score_store`, `select_top`) or select from a warmup's
saved checkpoints (`select_from_checkpoints`). Public names are imported on first use, so `import rose_hf` (and
`rose-hf --help`) stays instant.

Layout: `features/` (stages 1-3: per-example gradient features), `scoring/` (stages 4-5: scores and selection),
`cache/` (the feature cache and what keys it), `prefilter/` (an optional forward-only first stage for large pools:
`prefilter_pool`), `pipeline.py` (one run, however the checkpoints arrive), and at the edge `trainer/` (the
`TrainerCallback` and `RoseTrainer`) and `cli/`.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "RoseConfig": ".rose_config",
    "RoseDataSelector": ".trainer.callback",
    "RoseTrainer": ".trainer.rose_trainer",
    "SelectionResult": ".scoring.selection",
    "load_selection": ".scoring.selection",
    "PoolScores": ".scoring.selection",
    "score_store": ".scoring.selection",
    "select_top": ".scoring.budget",
    "budget_curve": ".scoring.budget",
    "FeatureStore": ".cache.store",
    "prefilter_pool": ".prefilter.stage",
    "PrefilterResult": ".prefilter.stage",
    "SelectionPlan": ".plan",
    "checkpoint_dirs": ".offline",
    "select_from_checkpoints": ".offline",
    "CacheMismatchError": ".errors",
    "UnsupportedAdapterError": ".errors",
    "UnsupportedOptimizerError": ".errors",
}
__all__ = [
    "CacheMismatchError",
    "FeatureStore",
    "PoolScores",
    "PrefilterResult",
    "RoseConfig",
    "RoseDataSelector",
    "RoseTrainer",
    "SelectionPlan",
    "SelectionResult",
    "UnsupportedAdapterError",
    "UnsupportedOptimizerError",
    "budget_curve",
    "checkpoint_dirs",
    "load_selection",
    "prefilter_pool",
    "score_store",
    "select_from_checkpoints",
    "select_top",
]

if TYPE_CHECKING:
    from .cache.store import FeatureStore
    from .errors import CacheMismatchError, UnsupportedAdapterError, UnsupportedOptimizerError
    from .offline import checkpoint_dirs, select_from_checkpoints
    from .plan import SelectionPlan
    from .prefilter.stage import PrefilterResult, prefilter_pool
    from .rose_config import RoseConfig
    from .scoring.budget import budget_curve, select_top
    from .scoring.selection import PoolScores, SelectionResult, load_selection, score_store
    from .trainer.callback import RoseDataSelector
    from .trainer.rose_trainer import RoseTrainer


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rose_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

"""rose_hf: ROSE task-specific data selection for the Hugging Face training stack.

Add `RoseDataSelector` to a LoRA warmup run, or let `RoseTrainer` run warmup -> selection -> final training.
The public names are imported on first use, so `import rose_hf` (and `rose-hf --help`) stays instant.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["RoseConfig", "RoseDataSelector", "RoseTrainer", "SelectionResult", "load_selection"]

_WHERE = {
    "RoseConfig": ".rose_config",
    "RoseDataSelector": ".callback",
    "RoseTrainer": ".rose_trainer",
    "SelectionResult": ".selection",
    "load_selection": ".selection",
}

if TYPE_CHECKING:
    from .callback import RoseDataSelector
    from .rose_config import RoseConfig
    from .rose_trainer import RoseTrainer
    from .selection import SelectionResult, load_selection


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rose_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

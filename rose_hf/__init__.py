"""rose_hf: ROSE task-specific data selection for the Hugging Face training stack.

Add `RoseDataSelector` to a LoRA warmup run, or let `RoseTrainer` run warmup -> selection -> final training.
"""

from .callback import RoseDataSelector
from .rose_config import RoseConfig
from .rose_trainer import RoseTrainer
from .selection import SelectionResult, load_selection

__all__ = ["RoseConfig", "RoseDataSelector", "RoseTrainer", "SelectionResult", "load_selection"]
__version__ = "0.1.0"

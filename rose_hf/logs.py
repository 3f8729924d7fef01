"""The library's one logging helper: main-process-only through accelerate when a distributed state exists, plain
`logging` otherwise (accelerate's logger raises before any `PartialState` exists, and scoring, reports and the
fixtures also run standalone)."""

from __future__ import annotations

import logging

from accelerate.logging import get_logger
from accelerate.state import PartialState

_logger = get_logger("rose_hf")


def log(message: str, level: int = logging.INFO) -> None:
    """Log `message` on the main process only (every process when no distributed state exists yet)."""
    if PartialState._shared_state:
        _logger.log(level, message, main_process_only=True)
    else:
        _logger.logger.log(level, message)


def warn(message: str) -> None:
    log(message, logging.WARNING)

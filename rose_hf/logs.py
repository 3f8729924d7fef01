"""The library's logging: one helper for messages, and one rule for what a user sees.

- Messages go to the `rose_hf` logger, on the main process only through accelerate when a distributed state exists,
  plain `logging` otherwise (accelerate's logger raises before any `PartialState` exists, and scoring, reports and the
  fixtures also run standalone).
- Their level follows the trainer's convention, as `transformers`' own messages do: `TrainingArguments.log_level`
  (`log_level_replica` on other processes) when a trainer runs, `transformers.logging` verbosity otherwise. So
  `log_level="info"` shows rose_hf's counts and cache decisions; the default shows warnings only.
- The one-line summary of a finished selection is always shown (`summary`), like the Trainer's final metrics line.
"""

from __future__ import annotations

import logging
import sys

from accelerate.logging import get_logger
from accelerate.state import PartialState

LOGGER_NAME = "rose_hf"
_logger = get_logger(LOGGER_NAME)


def follow_trainer_verbosity(args=None) -> None:
    """Set rose_hf's log level from `args.get_process_log_level()` (or transformers' verbosity), with a handler of
    its own so that INFO lines reach the console when asked for, without the root logger's configuration."""
    import transformers

    level = args.get_process_log_level() if args is not None else transformers.logging.get_verbosity()
    library = logging.getLogger(LOGGER_NAME)
    library.setLevel(level)
    if not any(getattr(handler, "_rose_hf", False) for handler in library.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rose_hf] %(message)s"))
        handler._rose_hf = True
        library.addHandler(handler)
        library.propagate = False  # as transformers does: one line per message, however the root logger is set up


def log(message: str, level: int = logging.INFO) -> None:
    """Log `message` on the main process only (every process when no distributed state exists yet)."""
    if PartialState._shared_state:
        _logger.log(level, message, main_process_only=True)
    else:
        _logger.logger.log(level, message)


def warn(message: str) -> None:
    log(message, logging.WARNING)


def summary(message: str) -> None:
    """The one line a user always sees at the end of a selection (main process only)."""
    if not PartialState._shared_state or PartialState().is_main_process:
        print(f"[rose_hf] {message}", flush=True)

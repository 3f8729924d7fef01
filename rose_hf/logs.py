"""The library's logging: one helper for messages, and one rule for what a user sees.

- Messages go to the `rose_hf` logger, on the main process only through accelerate when a distributed state exists,
  plain `logging` otherwise (accelerate's logger raises before any `PartialState` exists, and scoring, reports and the
  fixtures also run standalone).
- Their level follows the trainer's convention, as `transformers`' own messages do: `TrainingArguments.log_level`
  (`log_level_replica` on other processes) when it is set, else a level the program gave the `rose_hf` logger, else
  `transformers.logging` verbosity. So `log_level="info"` shows rose_hf's counts and cache decisions; the default
  shows warnings only.
- Every rose_hf module logs through `get_logger` here: accelerate's adapter, without its `[RANK 0]` prefix on a
  one-process run (the prefix tells processes apart; with one process it is noise on every line).
- The one-line summary of a finished selection is always shown (`summary`), like the Trainer's final metrics line.
"""

from __future__ import annotations

import logging
import sys

from accelerate.logging import MultiProcessAdapter
from accelerate.logging import get_logger as _accelerate_get_logger
from accelerate.state import PartialState

LOGGER_NAME = "rose_hf"


class _RoseAdapter(MultiProcessAdapter):
    """accelerate's `MultiProcessAdapter` (main-process-only logging), with the `[RANK i]` prefix only where there
    are several processes to tell apart."""

    def process(self, msg, kwargs):
        msg, kwargs = super().process(msg, kwargs)
        if PartialState().num_processes == 1:
            msg = msg.removeprefix("[RANK 0] ")
        return msg, kwargs


def get_logger(name: str) -> MultiProcessAdapter:
    """`accelerate.logging.get_logger(name)` (which also applies `ACCELERATE_LOG_LEVEL`) without the `[RANK 0]` prefix
    on a one-process run."""
    return _RoseAdapter(_accelerate_get_logger(name).logger, {})


_logger = get_logger(LOGGER_NAME)


def follow_trainer_verbosity(args=None) -> None:
    """Set rose_hf's log level as the Trainer sets transformers': from `args.log_level` (`log_level_replica` on
    other processes) when it is not "passive"; otherwise a level the program chose for `rose_hf` stays, and without
    one, transformers' verbosity applies. When the program has configured no logging (no root handler), rose_hf
    gets a console handler so that INFO lines show when asked for; otherwise the program's own handlers print them."""
    import transformers

    library = logging.getLogger(LOGGER_NAME)
    explicit = args is not None and (args.log_level != "passive" or not args.should_log)
    if explicit:
        library.setLevel(args.get_process_log_level())
    elif library.level == logging.NOTSET:
        library.setLevel(transformers.logging.get_verbosity())
    if not logging.getLogger().handlers and not any(getattr(h, "_rose_hf", False) for h in library.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rose_hf] %(message)s"))
        handler._rose_hf = True
        library.addHandler(handler)


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

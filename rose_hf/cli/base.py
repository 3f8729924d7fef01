"""The command base class of `rose-hf` (the shape of `trl/cli/commands/base.py`): each command registers its name and
help, then validates its arguments, saves them beside its outputs, and dispatches to the library."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(slots=True)
class CommandContext:
    """What every command gets: the whole command line."""

    argv: list[str]

    def argv_after(self, token: str) -> list[str]:
        """The command line after the first `token` (the command's own arguments)."""
        return self.argv[self.argv.index(token) + 1 :] if token in self.argv else []


class Command(ABC):
    """A `rose-hf` subcommand.

    Args:
        name: the subcommand, as typed.
        help_text: one line for `rose-hf --help`.
    """

    def __init__(self, name: str, help_text: str):
        self.name = name
        self.help_text = help_text

    @property
    def prog(self) -> str:
        return f"rose-hf {self.name}"

    def register(self, subparsers) -> None:
        """Add this command to `rose-hf`'s subparsers; its own parser reads the arguments after its name."""
        subparsers.add_parser(self.name, help=self.help_text, add_help=False)

    @abstractmethod
    def run(self, context: CommandContext) -> int:
        """Validate, save the arguments, dispatch; the exit status."""


def save_arguments(folder: str, command: str, **arguments) -> str:
    """Write the arguments a command ran with to `<folder>/rose_hf_cli.json` (main process only); its path."""
    from accelerate import PartialState

    path = os.path.join(folder, "rose_hf_cli.json")
    if PartialState().is_main_process:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as handle:
            json.dump({"command": command, **arguments}, handle, indent=2, default=str)
    return path

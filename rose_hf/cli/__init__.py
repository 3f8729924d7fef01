"""`rose-hf`: ROSE data selection from the command line.

```
rose-hf select --config recipe.yaml          # warmup + selection
rose-hf train  --config recipe.yaml          # warmup + selection + final training
rose-hf score  --config recipe.yaml          # scores + selection from cached features
rose-hf report --selection_dir out/selection # report of a finished selection
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m rose_hf.cli select --config recipe.yaml
```
Recipes hold the fields of `RoseScriptArguments`, `RoseConfig`, `trl.SFTConfig` and `trl.ModelConfig`; command-line
flags override them. `dataset_name`, `preference_dataset_name` and `model_name_or_path` are required. The demo and the
benchmarks run from a source checkout (`make demo`, `make bench-speed`). Heavy imports happen inside the commands, so
`rose-hf --help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from .arguments import RoseScriptArguments, make_parser, parse
from .base import Command, CommandContext
from .commands import get_commands
from .loading import load_any, load_data, load_model_and_tokenizer, model_init_kwargs

__all__ = [
    "COMMANDS", "Command", "CommandContext", "RoseScriptArguments", "get_commands", "load_any", "load_data",
    "load_model_and_tokenizer", "main", "make_parser", "model_init_kwargs", "parse",
]  # fmt: skip

COMMANDS = {command.name: command.help_text for command in get_commands()}


def _build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rose-hf",
        usage="rose-hf <command> [--config recipe.yaml] [--flag value ...]",
        description="ROSE data selection for TRL: pick the rows of an instruction pool whose gradients move a model "
        "toward a few preference pairs. `rose-hf <command> --help` lists a command's flags.",
        epilog="The demo and the benchmarks run from a source checkout: `make demo`, `make bench-speed`, "
        "`make bench-quality`.",
        allow_abbrev=False,
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for command in commands:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `rose-hf`; the exit status."""
    commands = {command.name: command for command in get_commands()}
    parser = _build_parser(list(commands.values()))
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return commands[args.command].run(CommandContext(argv=argv))

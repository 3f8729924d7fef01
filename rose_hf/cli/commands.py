"""The `rose-hf` commands: select, train, score, report."""

from __future__ import annotations

import argparse
import dataclasses
import os

from .arguments import DATA_FORMS, parse
from .base import Command, CommandContext, save_arguments

# What each required input is and how to give it (recipe key or flag of the same name).
REQUIRED = {
    "dataset_name": f"the pool to select from: {DATA_FORMS}",
    "preference_dataset_name": f"the preference pairs of the target: {DATA_FORMS}",
    "model_name_or_path": "the base model: a Hub name or a local folder (with --gguf_file, the folder of the file)",
}


def check_required(command: str, script_args, model_args, names=tuple(REQUIRED)) -> None:
    """Exit, naming each missing input of `names` and how to give it, before any model or data loads."""
    values = {**dataclasses.asdict(script_args), "model_name_or_path": model_args.model_name_or_path}
    missing = [name for name in names if not values[name]]
    if missing:
        lines = [f"  --{name}: {REQUIRED[name]}" for name in missing]
        raise SystemExit(
            f"rose-hf {command}: missing {', '.join(missing)}. Name {'them' if len(missing) > 1 else 'it'} in the "
            f"recipe (`{missing[0]}: ...`) or as a flag:\n" + "\n".join(lines)
        )


def _print_summary(selection_dir: str, result) -> None:
    print(
        f"rose_hf: selected {len(result.selected_indices)} of {len(result.scores)} pool rows "
        f"(checkpoint weights {[round(float(w), 3) for w in result.weights]}) -> {selection_dir}"
    )


def _recorded(script_args, rose_config, training_args, model_args) -> dict:
    return {"script_args": dataclasses.asdict(script_args), "rose_config": rose_config.to_dict(),
            "training_args": training_args.to_dict(), "model_args": dataclasses.asdict(model_args)}  # fmt: skip


class SelectCommand(Command):
    """Warmup LoRA training with feature caching, then scores and selection."""

    def __init__(self, name="select", help_text="warmup LoRA training with feature caching, then scores and selection"):
        super().__init__(name, help_text)

    def _trainer(self, context: CommandContext):
        from .loading import build_trainer

        args = parse(context.argv_after(self.name), self.prog, self.help_text)
        check_required(self.name, args[0], args[3])
        save_arguments(args[2].output_dir, self.name, **_recorded(*args))
        return build_trainer(*args)

    def run(self, context: CommandContext) -> int:
        trainer = self._trainer(context)
        trainer.run_warmup()
        _print_summary(trainer.rose_config.selection_dir, trainer.run_selection())
        return 0


class TrainCommand(SelectCommand):
    """Select, then train the base model again on the selection."""

    def __init__(self):
        super().__init__("train", "select, then train the base model again on the selection (RoseTrainer)")

    def run(self, context: CommandContext) -> int:
        trainer = self._trainer(context)
        trainer.train()
        trainer.save_model()
        _print_summary(trainer.rose_config.selection_dir, trainer.selection)
        return 0


class ScoreCommand(Command):
    """Scores and selection from the features a select or train run cached."""

    def __init__(self):
        super().__init__("score", "scores and selection from cached features (e.g. with another budget or aggregation)")

    def run(self, context: CommandContext) -> int:
        from accelerate import PartialState

        from ..pipeline import SelectionPipeline
        from ..rose_config import RoseConfig
        from .loading import load_data

        PartialState()
        script_args, rose_config, training_args, model_args = parse(
            context.argv_after(self.name), self.prog, self.help_text
        )
        check_required(self.name, script_args, model_args, ("dataset_name", "preference_dataset_name"))
        # Features live where RoseTrainer put them unless the recipe names selection_dir.
        default = next(f.default for f in dataclasses.fields(RoseConfig) if f.name == "selection_dir")
        if rose_config.selection_dir == default:
            selection_dir = os.path.join(training_args.output_dir, "selection")
            rose_config = dataclasses.replace(rose_config, selection_dir=selection_dir)
        save_arguments(rose_config.selection_dir, self.name, script_args=dataclasses.asdict(script_args),
                       rose_config=rose_config.to_dict())  # fmt: skip
        pool, pairs = load_data(script_args)
        _print_summary(rose_config.selection_dir, SelectionPipeline(pool, pairs, rose_config).select())
        return 0


class ReportCommand(Command):
    """The markdown report, with plots, of a finished selection."""

    def __init__(self):
        super().__init__("report", "write the markdown report with plots of a finished selection")

    def run(self, context: CommandContext) -> int:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.help_text)
        parser.add_argument("--selection_dir", "--output_dir", dest="selection_dir", required=True,
                            help="A finished selection folder (holding selection.json).")  # fmt: skip
        args = parser.parse_args(context.argv_after(self.name))
        from ..report import report_from_output_dir

        print(report_from_output_dir(args.selection_dir))
        return 0


def get_commands() -> list[Command]:
    """Every `rose-hf` command, in the order of `rose-hf --help`."""
    return [SelectCommand(), TrainCommand(), ScoreCommand(), ReportCommand()]

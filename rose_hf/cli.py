"""`rose-hf`: ROSE data selection from the command line.

```
rose-hf select --config recipes/tiny/rose_tiny.yaml          # warmup + selection
rose-hf train  --config recipes/tiny/rose_tiny.yaml          # warmup + selection + final training
rose-hf score  --config recipes/tiny/rose_tiny.yaml          # scores + selection from cached features
rose-hf report --output_dir out/selection                    # report of a finished selection
rose-hf demo                                                 # the offline end-to-end demo
make bench-speed | make bench-quality                        # benchmarks, from a source checkout
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m rose_hf.cli select --config X.yaml
```
Recipes hold the fields of `RoseScriptArguments`, `RoseConfig`, `trl.SFTConfig` and `trl.ModelConfig`; the
`RoseConfig` fields that `SFTConfig` also has are spelled `rose_output_dir`, `rose_loss_type`, `rose_max_length`
and `rose_seed`.
Command-line flags override the recipe. Heavy imports happen inside the commands, so `rose-hf --help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field

COMMANDS = {
    "select": "warmup LoRA training with feature caching, then scores and selection",
    "train": "select, then train the base model again on the selection (RoseTrainer)",
    "score": "scores and selection from cached features (e.g. with another budget or aggregation)",
    "report": "write the markdown report with plots of a finished selection",
    "demo": "the offline end-to-end demo on a tiny pretrained model (CPU, a few minutes)",
}
SYNTHETIC = "rose-hf:synthetic"
TINY_MODEL = "rose-hf:tiny"


@dataclass
class RoseScriptArguments:
    """Where the data comes from, and the model file when it is a GGUF one.

    Args:
        dataset_name: the pool: a Hub name, a local `save_to_disk` folder, a .json/.jsonl/.parquet/.csv file, or
            `rose-hf:synthetic` (the bundled synthetic benchmark).
        preference_dataset_name: the preference pairs, same forms.
        gguf_file: a llama.cpp .gguf file in the folder `model_name_or_path`; the warmup and the final stage load the
            model and its tokenizer from a float copy of it (see `rose_hf.gguf`).
    """

    dataset_name: str = field(default=SYNTHETIC, metadata={"help": "Pool: Hub name, folder, data file or rose-hf:synthetic."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of the pool."})
    preference_dataset_name: str = field(
        default=SYNTHETIC, metadata={"help": "Preference pairs: Hub name, folder, data file or rose-hf:synthetic."}
    )
    preference_dataset_split: str = field(default="train", metadata={"help": "Split of the preference pairs."})
    synthetic_pool_size: int = field(default=4000, metadata={"help": "Pool size of rose-hf:synthetic."})
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A llama.cpp .gguf file (its name) in the local folder --model_name_or_path, e.g. "
            "SmolLM2-135M-Instruct.Q4_1.gguf: model and tokenizer load from a float copy, converted once and cached "
            "in $ROSE_HF_CACHE/gguf or ~/.cache/rose_hf/gguf. Needs `pip install gguf`."
        },
    )


def _shadow_rose_config(taken: set[str]):
    """RoseConfig with `rose_`-prefixed names for the fields another dataclass of the parser already has."""
    from .rose_config import RoseConfig

    renamed = {}
    specs = []
    for f in dataclasses.fields(RoseConfig):
        name = f"rose_{f.name}" if f.name in taken else f.name
        renamed[name] = f.name
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        specs.append((name, f.type, field(default=default, metadata=f.metadata)))
    shadow = dataclasses.make_dataclass("RoseConfigArguments", specs)
    shadow.__module__ = __name__
    return shadow, renamed


def make_parser(command: str | None = None):
    """The TRL parser of every command: `(RoseScriptArguments, RoseConfig, SFTConfig, ModelConfig)`.

    Its `--help` lists `--config` and rose_hf's own fields first, then the ~900 inherited SFTConfig/ModelConfig
    flags under their own heading.
    """
    from trl import ModelConfig, SFTConfig, TrlParser

    taken = {f.name for cls in (RoseScriptArguments, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    shadow, renamed = _shadow_rose_config(taken)
    own = {f.name for cls in (RoseScriptArguments, shadow) for f in dataclasses.fields(cls)}
    trl_checkpointing = next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "gradient_checkpointing")
    prog = f"rose-hf {command}" if command else "rose-hf"

    class RoseParser(TrlParser):
        """TrlParser that returns a real `RoseConfig` (validated by its `__post_init__`)."""

        def format_help(self):
            # argparse would list every flag in one block, in the usage line too: rose_hf's own go first instead.
            formatter = self._get_formatter()
            formatter.add_usage(self.usage, [], [])
            formatter.add_text(self.description)
            config = argparse.Action(["--config"], dest="config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                                     help="YAML recipe with values for any of the flags below; flags override it.")
            mine = [action for action in self._actions if action.dest in own | {"help"}]
            inherited = [action for action in self._actions if action not in mine]
            for title, actions in (
                ("rose_hf options (recipe, data, RoseConfig)", [config, *mine]),
                ("inherited options (trl.SFTConfig for training, trl.ModelConfig for the model and LoRA; see their "
                 "documentation)", inherited),
            ):  # fmt: skip
                formatter.start_section(title)
                formatter.add_arguments(actions)
                formatter.end_section()
            return formatter.format_help()

        def parse_known_args(self, args=None, namespace=None):
            # TRL defaults the deprecated `gradient_checkpointing` to True, so every SFTConfig built from flags warned
            # about it (see make_parser). Unnamed by flag and recipe, TRL's default is given under the new name.
            namespace, remaining = super().parse_known_args(args, namespace)
            if namespace.activation_checkpointing is None and namespace.gradient_checkpointing is None:
                namespace.activation_checkpointing = trl_checkpointing
            return namespace, remaining

        def parse_args_and_config(self, args=None, **kwargs):
            from .rose_config import RoseConfig

            output = list(super().parse_args_and_config(args, **kwargs))
            for i, value in enumerate(output):
                if isinstance(value, shadow):
                    output[i] = RoseConfig(**{renamed[k]: v for k, v in dataclasses.asdict(value).items()})
            return tuple(output)

    parser = RoseParser(
        (RoseScriptArguments, shadow, SFTConfig, ModelConfig),
        prog=prog,
        usage=f"{prog} [--config RECIPE.yaml] [--ROSE_FLAG VALUE ...] [--SFTCONFIG_OR_MODELCONFIG_FLAG VALUE ...]",
        description=COMMANDS.get(command),
    )
    # `gradient_checkpointing` is unset unless a flag or the recipe names it (then transformers' FutureWarning about
    # the old name is the user's to see, and the old name still applies); parse_known_args fills in TRL's default.
    parser.set_defaults(gradient_checkpointing=None)
    return parser


def parse(argv: list[str], command: str | None = None):
    """`(script_args, rose_config, training_args, model_args)` from recipe + flags."""
    return make_parser(command).parse_args_and_config(argv)


def load_data(script_args: RoseScriptArguments, seed: int = 0):
    """The pool and the preference pairs named by `script_args`."""
    if SYNTHETIC in (script_args.dataset_name, script_args.preference_dataset_name):
        from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task

        task = make_synthetic_task(SyntheticTaskConfig(pool_size=script_args.synthetic_pool_size, seed=seed))
    pool = (
        task.pool
        if script_args.dataset_name == SYNTHETIC
        else load_any(script_args.dataset_name, script_args.dataset_train_split)
    )
    pairs = (
        task.validation
        if script_args.preference_dataset_name == SYNTHETIC
        else load_any(script_args.preference_dataset_name, script_args.preference_dataset_split)
    )
    return pool, pairs


def load_any(name: str, split: str):
    """A `datasets.Dataset` from a `save_to_disk` folder, a data file, or the Hub (offline: from its cache)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(os.path.join(name, "dataset_dict.json"))
    ):
        dataset = load_from_disk(name)
        return dataset[split] if isinstance(dataset, DatasetDict) else dataset
    extension = os.path.splitext(name)[1].lstrip(".")
    if os.path.isfile(name):
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"{name}: unsupported data file type {extension!r}; use .json, .jsonl, .parquet or .csv.")
        return load_dataset(builder, data_files=name, split="train")
    dataset = load_dataset(name, split=split)
    assert isinstance(dataset, Dataset)
    return dataset


def load_model_and_tokenizer(model_args, training_args, gguf_file: str | None = None):
    """The base model name/path and tokenizer; `rose-hf:tiny` pretrains (once) and caches the tiny base model.

    With `gguf_file`, the folder and no tokenizer: `RoseTrainer(gguf_file=...)` loads both from the float copy."""
    from transformers import AutoTokenizer

    name = model_args.model_name_or_path
    if gguf_file is not None:
        if name in (None, TINY_MODEL):
            raise ValueError(
                f"--gguf_file {gguf_file} needs --model_name_or_path, the local folder that holds the file (got "
                f"{name!r})."
            )
        return name, None
    if name in (None, TINY_MODEL):
        from rose_fixtures.base_model import tiny_base_model

        name = tiny_base_model()
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return name, tokenizer


def _peft_config(model_args):
    from trl import get_peft_config

    if not model_args.use_peft:
        raise ValueError("ROSE features are LoRA gradients: set `use_peft: true` (and lora_r, lora_target_modules...).")
    return get_peft_config(model_args)


def model_init_kwargs(model_args) -> dict | None:
    """`from_pretrained` kwargs of the recipe's base model: its `dtype` and, for QLoRA (`load_in_4bit: true`), TRL's
    bitsandbytes config. It goes into `model_init_kwargs` (as a dict, which `from_pretrained` accepts and JSON
    keeps) so that the warmup and the final training both load the base in 4 bits."""
    from trl import get_quantization_config

    kwargs = {}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization.to_dict()
    return kwargs or None


def _trainer(script_args, rose_config, training_args, model_args):
    from .trainer.rose_trainer import RoseTrainer

    pool, pairs = load_data(script_args, seed=rose_config.seed)
    model_name, tokenizer = load_model_and_tokenizer(model_args, training_args, script_args.gguf_file)
    if training_args.model_init_kwargs is None:
        training_args.model_init_kwargs = model_init_kwargs(model_args)
    return RoseTrainer(
        model=model_name,
        args=training_args,
        train_dataset=pool,
        preference_dataset=pairs,
        rose_config=rose_config,
        peft_config=_peft_config(model_args),
        processing_class=tokenizer,
        gguf_file=script_args.gguf_file,
    )


def cmd_select(argv: list[str]) -> None:
    trainer = _trainer(*parse(argv, "select"))
    trainer.run_warmup()
    result = trainer.run_selection()
    _print_summary(trainer.rose_config.output_dir, result)


def cmd_train(argv: list[str]) -> None:
    trainer = _trainer(*parse(argv, "train"))
    trainer.train()
    trainer.save_model()
    _print_summary(trainer.rose_config.output_dir, trainer.selection)


def cmd_score(argv: list[str]) -> None:
    from accelerate import PartialState

    from .pipeline import SelectionPipeline

    PartialState()
    script_args, rose_config, training_args, _ = parse(argv, "score")
    # Features live where RoseTrainer put them unless the recipe names rose_output_dir explicitly.
    if rose_config.output_dir == "rose_output":
        rose_config = dataclasses.replace(rose_config, output_dir=os.path.join(training_args.output_dir, "selection"))
    pool, pairs = load_data(script_args, seed=rose_config.seed)
    result = SelectionPipeline(pool, pairs, rose_config).select()
    _print_summary(rose_config.output_dir, result)


def cmd_report(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rose-hf report", description=COMMANDS["report"])
    parser.add_argument("--output_dir", required=True, help="A finished selection folder (holding selection.json).")
    args = parser.parse_args(argv)
    from .report import report_from_output_dir

    print(report_from_output_dir(args.output_dir))


def cmd_demo(argv: list[str]) -> None:
    from examples.demo import main as demo_main

    demo_main(argv)


def _print_summary(output_dir: str, result) -> None:
    print(
        f"rose_hf: selected {len(result.selected_indices)} of {len(result.scores)} pool rows "
        f"(checkpoint weights {[round(float(w), 3) for w in result.weights]}) -> {output_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
        print(
            "usage: rose-hf <command> [--config recipe.yaml] [--flag value ...]\n\ncommands:\n" + "\n".join(lines)
            + "\n\nBenchmarks run from a source checkout: `make bench-speed`, `make bench-quality`."
        )
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"rose-hf: unknown command {argv[0]!r}")
        return
    handler = globals()[f"cmd_{argv[0]}"]
    handler(argv[1:])


if __name__ == "__main__":
    main()

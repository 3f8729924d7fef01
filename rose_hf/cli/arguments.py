"""The arguments of `rose-hf`: `RoseScriptArguments` and the one parser of every command,
`TrlParser((RoseScriptArguments, RoseConfig, SFTConfig, ModelConfig))`."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass, field

# Old spellings of renamed RoseConfig fields on the command line and in recipes -> (old field name, new field name).
# Kept in step with `rose_config.DEPRECATED_NAMES` (not imported here: it pulls in torch, and `--help` stays instant).
DEPRECATED_FLAGS = {
    "rose_output_dir": ("output_dir", "selection_dir"),
    "rose_loss_type": ("loss_type", "dpo_loss_type"),
    "rose_max_length": ("max_length", "feature_max_length"),
    "rose_seed": ("seed", "warmup_seed"),
}
DATA_FORMS = "a Hub name, a local `save_to_disk` folder, or a .json/.jsonl/.parquet/.csv file"


@dataclass
class RoseScriptArguments:
    """Where the data comes from, and the model file when it is a GGUF one.

    Args:
        dataset_name: the pool: a Hub name, a local `save_to_disk` folder or a .json/.jsonl/.parquet/.csv file.
        preference_dataset_name: the preference pairs, same forms.
        gguf_file: a llama.cpp .gguf file in the folder `model_name_or_path`; the warmup and the final stage load the
            model and its tokenizer from a float copy of it (see `rose_hf.gguf`).
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": f"Pool to select from (required): {DATA_FORMS}."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of the pool."})
    preference_dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Preference pairs of the target (required): {DATA_FORMS}, with prompt, chosen and "
                  "rejected columns (and optionally subtask)."},
    )
    preference_dataset_split: str = field(default="train", metadata={"help": "Split of the preference pairs."})
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A llama.cpp .gguf file (its name) in the local folder --model_name_or_path, e.g. "
            "SmolLM2-135M-Instruct.Q4_1.gguf: model and tokenizer load from a float copy, converted once and cached "
            "in $ROSE_HF_CACHE/gguf or ~/.cache/rose_hf/gguf. Needs `pip install gguf`."
        },
    )


def _given(args: list[str], config: dict) -> set[str]:
    """The names a recipe or a flag sets explicitly."""
    flags = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    return flags | set(config) | {name.removeprefix("no_") for name in flags}


def make_parser(prog: str = "rose-hf", description: str | None = None):
    """The TRL parser of every command: `(RoseScriptArguments, RoseConfig, SFTConfig, ModelConfig)`.

    Its `--help` lists `--config` and rose_hf's own fields first, then the inherited SFTConfig/ModelConfig flags under
    their own heading. The old spellings `--rose_output_dir`, `--rose_loss_type`, `--rose_max_length`, `--rose_seed`
    (flags or recipe keys) still work for one release, with a FutureWarning.
    """
    import yaml
    from trl import ModelConfig, SFTConfig, TrlParser

    from ..rose_config import RoseConfig

    own = {f.name for cls in (RoseScriptArguments, RoseConfig) for f in dataclasses.fields(cls)}
    trl_checkpointing = next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "gradient_checkpointing")

    class RoseParser(TrlParser):
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
            namespace, remaining = super().parse_known_args(args, namespace)
            # TRL defaults the deprecated `gradient_checkpointing` to True, so every SFTConfig built from flags warned
            # about it. Unnamed by flag and recipe, TRL's default is given under the new name.
            if namespace.activation_checkpointing is None and namespace.gradient_checkpointing is None:
                namespace.activation_checkpointing = trl_checkpointing
            for spelling, (old, new) in DEPRECATED_FLAGS.items():
                value = getattr(namespace, spelling)
                delattr(namespace, spelling)  # not a field of any dataclass: HfArgumentParser would return it
                if value is not None:
                    warnings.warn(f"`{spelling}` is deprecated and will be removed in the next release: use `{new}` "
                                  f"(RoseConfig's `{old}` is now `{new}`).", FutureWarning, stacklevel=2)  # fmt: skip
                    setattr(namespace, new, value)
            return namespace, remaining

        def parse_args_and_config(self, args=None, **kwargs):
            import sys

            args = list(sys.argv[1:] if args is None else args)
            config = {}
            if "--config" in args:
                with open(args[args.index("--config") + 1]) as handle:
                    config = yaml.safe_load(handle) or {}
            given = _given(args, config if isinstance(config, dict) else {})
            for spelling, (_, new) in DEPRECATED_FLAGS.items():
                if spelling in given and new in given:
                    raise ValueError(f"Both `{spelling}` and `{new}` are given: `{spelling}` is the deprecated name "
                                     f"of `{new}`; keep `{new}` only.")  # fmt: skip
            return super().parse_args_and_config(args, **kwargs)

    parser = RoseParser(
        (RoseScriptArguments, RoseConfig, SFTConfig, ModelConfig),
        prog=prog,
        usage=f"{prog} [--config RECIPE.yaml] [--ROSE_FLAG VALUE ...] [--SFTCONFIG_OR_MODELCONFIG_FLAG VALUE ...]",
        description=description,
    )
    kinds = {"output_dir": str, "loss_type": str, "max_length": int, "seed": int}
    for spelling, (old, _) in DEPRECATED_FLAGS.items():
        parser.add_argument(f"--{spelling}", type=kinds[old], default=None, help=argparse.SUPPRESS)
    # `gradient_checkpointing` is unset unless a flag or the recipe names it (then transformers' FutureWarning about
    # the old name is the user's to see, and the old name still applies); parse_known_args fills in TRL's default.
    parser.set_defaults(gradient_checkpointing=None)
    return parser


def parse(argv: list[str], prog: str = "rose-hf", description: str | None = None):
    """`(script_args, rose_config, training_args, model_args)` from recipe + flags."""
    return make_parser(prog, description).parse_args_and_config(argv)

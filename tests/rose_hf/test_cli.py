"""Every recipe parses through the real CLI parser; the CLI runs the tiny recipe end to end; `--help` is instant."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from rose_hf import RoseConfig
from rose_hf.cli import main, parse

ROOT = Path(ROOT)
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def _future_warnings(build):
    """What `build()` returns, and the messages of the FutureWarnings it raised (pyproject ignores FutureWarnings, so
    the filter is reset here)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = build()
    return value, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_parses(recipe):
    text = recipe.read_text()
    assert text.startswith("#") and "Launch" in text.splitlines()[0] + text.splitlines()[1], "open with the launch line"
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine: validate the rest here.
    parsed, warned = _future_warnings(lambda: parse(["--config", str(recipe), "--bf16", "false", "--use_cpu", "true"]))
    script_args, rose_config, training_args, model_args = parsed
    assert isinstance(rose_config, RoseConfig)
    assert not [message for message in warned if "RoseConfig" in message], "recipes use RoseConfig's new names"
    raw = yaml.safe_load(text)
    for key, value in raw.items():  # every key of the recipe reached exactly one dataclass, with its value
        holders = [obj for obj in (script_args, training_args, model_args, rose_config)
                   if key in {f.name for f in dataclasses.fields(obj)}]  # fmt: skip
        assert len(holders) == 1, f"{key} is a field of {len(holders)} configs"
        if key in ("bf16", "use_cpu", "report_to"):
            continue
        got = getattr(holders[0], key)
        assert got == value or (isinstance(got, list) and list(value) == got), (key, got, value)
    assert model_args.use_peft and model_args.lora_target_modules
    for required in ("dataset_name", "preference_dataset_name", "model_name_or_path"):
        assert raw.get(required), f"{recipe.name} lacks {required}"


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_recipes_run_the_paper_s_method(recipe):
    """The library's defaults add a first stage and mix in LESS's ranking; the paper recipes must turn both off."""
    _, rose_config, _, _ = parse(["--config", str(recipe), "--bf16", "false", "--use_cpu", "true"])
    assert rose_config.validation_objective == "dpo" and rose_config.scoring == "paper"
    assert rose_config.prefilter_fraction is None and rose_config.num_feature_checkpoints is None


def test_config_names_collide_with_no_trl_field():
    from trl import ModelConfig, SFTConfig

    from rose_hf.cli import RoseScriptArguments

    ours = [{f.name for f in dataclasses.fields(cls)} for cls in (RoseScriptArguments, RoseConfig)]
    theirs = {f.name for cls in (SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert not (ours[0] | ours[1]) & theirs and not ours[0] & ours[1]


def test_old_names_still_work_for_one_release_and_warn(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("rose_output_dir: old_selection\nrose_loss_type: ipo\nrose_max_length: 32\nmax_length: 99\n")
    (_, rose_config, training_args, _), warned = _future_warnings(
        lambda: parse(["--config", str(recipe), "--rose_seed", "7", "--use_cpu", "true"])
    )
    assert (rose_config.selection_dir, rose_config.dpo_loss_type) == ("old_selection", "ipo")
    assert (rose_config.feature_max_length, rose_config.warmup_seed) == (32, 7)
    assert training_args.max_length == 99 and training_args.seed == 42  # SFTConfig's own fields are untouched
    for old, new in [("rose_output_dir", "selection_dir"), ("rose_loss_type", "dpo_loss_type"),
                     ("rose_max_length", "feature_max_length"), ("rose_seed", "warmup_seed")]:  # fmt: skip
        assert any(f"`{old}` is deprecated" in m and f"use `{new}`" in m for m in warned), old
    # The Python names: a constructor keyword and a property, both warning and naming the new name.
    config, warned = _future_warnings(lambda: RoseConfig(output_dir="sel", seed=3))
    assert (config.selection_dir, config.warmup_seed) == ("sel", 3) and "output_dir" not in config.to_dict()
    assert any("`output_dir` is deprecated" in m and "`selection_dir`" in m for m in warned)
    value, warned = _future_warnings(lambda: config.max_length)
    assert value == 2048 and any("use `feature_max_length`" in m for m in warned)
    _, warned = _future_warnings(lambda: setattr(config, "loss_type", "hinge"))
    assert config.dpo_loss_type == "hinge" and any("use `dpo_loss_type`" in m for m in warned)
    # Both names at once is an error naming both.
    with pytest.raises(ValueError, match="`output_dir` and `selection_dir`"):
        RoseConfig(output_dir="a", selection_dir="b")
    with pytest.raises(ValueError, match="`rose_seed` and `warmup_seed`"):
        parse(["--rose_seed", "1", "--warmup_seed", "2", "--use_cpu", "true"])
    recipe.write_text("rose_output_dir: a\nselection_dir: b\n")
    with pytest.raises(ValueError, match="`rose_output_dir` and `selection_dir`"):
        parse(["--config", str(recipe), "--use_cpu", "true"])


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_open_with_a_launch_line(config):
    text = config.read_text()
    assert "accelerate launch --config_file recipes/accelerate_configs/" + config.name in text
    assert yaml.safe_load(text)["distributed_type"]


def test_help_is_instant_and_names_no_fixture():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rose_hf.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("select", "train", "score", "report"):
        assert f"    {command} " in result.stdout
    assert "make demo" in result.stdout  # the demo runs from a source checkout, not from the installed CLI
    assert "    demo " not in result.stdout and "tiny" not in result.stdout  # no demo command, no bundled model
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, rose_hf.cli; print(' '.join(sys.modules))"], capture_output=True, text=True
    ).stdout.split(), "the CLI module must not import torch before a command runs"
    print(f"rose-hf --help: {elapsed:.2f}s")


def test_unknown_command_and_demo_are_refused(capsys):
    for command in ("nonsense", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command])
        assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["dataset_name", "preference_dataset_name", "model_name_or_path"])
def test_select_without_an_input_fails_before_loading_anything(tmp_path, missing):
    # The paths do not exist: had the command loaded data or a model first, that would fail with another error.
    given = {"dataset_name": "absent/pool.jsonl", "preference_dataset_name": "absent/pairs.jsonl",
             "model_name_or_path": str(tmp_path / "absent_model")}  # fmt: skip
    flags = [item for name, value in given.items() if name != missing for item in (f"--{name}", value)]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=f"(?s)rose-hf select: missing {missing}.*--{missing}: "):
        main(["select", *flags, "--use_peft", "true", "--use_cpu", "true", "--output_dir", str(tmp_path / "out")])
    assert time.perf_counter() - start < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["select", "train", "score"])
def test_command_help_puts_rose_hf_first(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: rose-hf {command} [--config RECIPE.yaml]") and len(lines[0]) < 120
    heading = text.index("inherited options (trl.SFTConfig")
    assert text.index("--config RECIPE.yaml  YAML recipe") < heading
    from rose_hf.cli import RoseScriptArguments

    for f in [*dataclasses.fields(RoseScriptArguments), *dataclasses.fields(RoseConfig)]:
        assert 0 < text.index(f"  --{f.name} ") < heading, f.name
    assert "--rose_" not in text, "the deprecated spellings are not advertised"
    for inherited in ("--learning_rate ", "--num_train_epochs ", "--lora_r ", "--model_name_or_path "):
        assert text.index("  " + inherited) > heading, inherited


@pytest.mark.slow
def test_cli_select_score_report_on_the_tiny_recipe(tmp_path, tiny_assets):
    output_dir = str(tmp_path / "tiny")
    common = ["--config", str(ROOT / "recipes" / "tiny" / "rose_tiny.yaml"), "--output_dir", output_dir,
              "--num_train_epochs", "1", *[item for key, path in tiny_assets.items() for item in (f"--{key}", path)]]
    assert main(["select", *common]) == 0
    selection = os.path.join(output_dir, "selection")
    with open(os.path.join(selection, "selected_indices.json")) as handle:
        first = json.load(handle)
    assert len(first) == 20  # 5% of the 400-row pool
    with open(os.path.join(output_dir, "rose_hf_cli.json")) as handle:  # the command saved what it ran with
        recorded = json.load(handle)
    assert recorded["command"] == "select" and recorded["script_args"]["dataset_name"] == tiny_assets["dataset_name"]
    assert main(["score", *common, "--selection_fraction", "0.1"]) == 0  # re-select from the cached features
    with open(os.path.join(selection, "selected_indices.json")) as handle:
        wider = json.load(handle)
    assert len(wider) == 40 and wider[:20] == first  # same scores, a larger budget
    assert main(["report", "--selection_dir", selection]) == 0
    assert os.path.getsize(os.path.join(selection, "report.md")) > 0


def test_tiny_assets_are_the_synthetic_task_as_files(tiny_assets):
    from datasets import load_dataset

    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task

    task = make_synthetic_task(SyntheticTaskConfig(pool_size=400, seed=0))
    pool = load_dataset("json", data_files=tiny_assets["dataset_name"], split="train")
    pairs = load_dataset("json", data_files=tiny_assets["preference_dataset_name"], split="train")
    assert pool.to_list() == task.pool.to_list() and pairs.to_list() == task.validation.to_list()
    assert os.path.isfile(os.path.join(tiny_assets["model_name_or_path"], "config.json"))


def _checkpointing_warnings(build):
    """What `build()` returns, and the FutureWarnings about `gradient_checkpointing` it raised."""
    value, warned = _future_warnings(build)
    return value, [message for message in warned if "gradient_checkpointing" in message]


def test_our_configs_raise_no_gradient_checkpointing_warning(tmp_path):
    """TRL defaults the deprecated `gradient_checkpointing` to True, so an SFTConfig that does not name
    `activation_checkpointing` warns; the demo printed that warning about our own arguments. Ours name the new field
    with TRL's value, so checkpointing stays on."""
    import dataclasses

    from rose_fixtures.base_model import TinyBaseConfig, pretrain_args
    from rose_fixtures.recipe import TinyRecipe

    builders = {
        "TinyRecipe.sft_config": lambda: TinyRecipe().sft_config(str(tmp_path), seed=0, save=True),
        "pretrain_args": lambda: pretrain_args(TinyBaseConfig(), str(tmp_path)),
        "rose-hf tiny recipe": lambda: parse(["--config", str(ROOT / "recipes" / "tiny" / "rose_tiny.yaml")])[2],
        **{f"rose-hf {recipe.name}": (lambda recipe=recipe: parse(["--config", str(recipe), "--bf16", "false",
                                                                    "--use_cpu", "true"])[2]) for recipe in RECIPES},
    }  # fmt: skip
    for name, build in builders.items():
        args, warned = _checkpointing_warnings(build)
        assert not warned, (name, warned)
        assert args.activation_checkpointing is True and args.gradient_checkpointing is True, name
        # RoseTrainer's stages are dataclasses.replace copies of the user's arguments.
        copy, warned = _checkpointing_warnings(lambda args=args: dataclasses.replace(args, output_dir=str(tmp_path)))
        assert not warned and copy.activation_checkpointing is True, name
    # A user who names the old field still gets it, and transformers' warning about it.
    args, warned = _checkpointing_warnings(lambda: parse(["--gradient_checkpointing", "false", "--use_cpu", "true"])[2])
    assert args.activation_checkpointing is False and warned
    args, warned = _checkpointing_warnings(lambda: parse(["--no_gradient_checkpointing", "--use_cpu", "true"])[2])
    assert args.activation_checkpointing is False and warned
    args, warned = _checkpointing_warnings(lambda: parse(["--activation_checkpointing", "false", "--use_cpu", "true"])[2])
    assert args.activation_checkpointing is False and not warned

"""Every recipe parses through the real CLI parser; the CLI runs the tiny recipe end to end; `--help` is instant."""

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


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_parses(recipe):
    text = recipe.read_text()
    assert text.startswith("#") and "Launch" in text.splitlines()[0] + text.splitlines()[1], "open with the launch line"
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine: validate the rest here.
    script_args, rose_config, training_args, model_args = parse(["--config", str(recipe), "--bf16", "false",
                                                                 "--use_cpu", "true"])  # fmt: skip
    assert isinstance(rose_config, RoseConfig)
    raw = yaml.safe_load(text)
    for key, value in raw.items():  # every key of the recipe reached a dataclass, with its value
        name = key.removeprefix("rose_") if key.startswith("rose_") else key
        holders = [obj for obj in (script_args, training_args, model_args, rose_config) if hasattr(obj, name)]
        if key.startswith("rose_"):
            holders = [rose_config]
        assert holders, f"{key} is not a field of any config"
        if key in ("bf16", "use_cpu", "report_to"):
            continue
        got = getattr(holders[0], name)
        assert got == value or (isinstance(got, list) and list(value) == got), (key, got, value)
    assert model_args.use_peft and model_args.lora_target_modules


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_open_with_a_launch_line(config):
    text = config.read_text()
    assert "accelerate launch --config_file recipes/accelerate_configs/" + config.name in text
    assert yaml.safe_load(text)["distributed_type"]


def test_help_is_instant():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rose_hf.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "select" in result.stdout
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, rose_hf.cli; print(' '.join(sys.modules))"], capture_output=True, text=True
    ).stdout.split(), "the CLI module must not import torch before a command runs"
    print(f"rose-hf --help: {elapsed:.2f}s")


@pytest.mark.parametrize("command", ["select", "train", "score"])
def test_command_help_puts_rose_hf_first(command, capsys):
    import dataclasses

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
        flag = f"--rose_{f.name} " if f.name in ("output_dir", "loss_type", "max_length", "seed") else f"--{f.name} "
        assert 0 < text.index("  " + flag) < heading, f.name
    for inherited in ("--learning_rate ", "--num_train_epochs ", "--lora_r ", "--model_name_or_path "):
        assert text.index("  " + inherited) > heading, inherited


@pytest.mark.slow
def test_cli_select_score_report_on_the_tiny_recipe(tmp_path):
    output_dir = str(tmp_path / "tiny")
    common = ["--config", str(ROOT / "recipes" / "tiny" / "rose_tiny.yaml"), "--output_dir", output_dir,
              "--synthetic_pool_size", "400", "--num_train_epochs", "1"]  # fmt: skip
    main(["select", *common])
    selection = os.path.join(output_dir, "selection")
    with open(os.path.join(selection, "selected_indices.json")) as handle:
        first = json.load(handle)
    assert len(first) == 20  # 5% of 400
    main(["score", *common, "--selection_fraction", "0.1"])  # re-select from the cached features
    with open(os.path.join(selection, "selected_indices.json")) as handle:
        wider = json.load(handle)
    assert len(wider) == 40 and wider[:20] == first  # same scores, a larger budget
    main(["report", "--output_dir", selection])
    assert os.path.getsize(os.path.join(selection, "report.md")) > 0
    with pytest.raises(SystemExit):
        main(["nonsense"])


def _checkpointing_warnings(build):
    """What `build()` returns, and the FutureWarnings about `gradient_checkpointing` it raised (pyproject ignores
    FutureWarnings, so the filter is reset here)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = build()
    return value, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)
                   and "gradient_checkpointing" in str(w.message)]  # fmt: skip


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

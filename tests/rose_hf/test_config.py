"""`RoseConfig`: every bad value is refused with a message naming the field, and the HF parsers build it."""

import dataclasses
import math

import pytest
from transformers import HfArgumentParser

from rose_hf.rose_config import RoseConfig

BAD_VALUES = [
    ("scoring", "best"),
    ("validation_objective", "kl"),
    ("projection", "gaussian"),
    ("preconditioner", "adafactor"),
    ("subtask_aggregation", "min"),
    ("feature_dtype", "bfloat16"),
    ("final_training", "qlora"),
    ("final_num_train_epochs", 0),
    ("final_num_train_epochs", -1.0),
    ("final_num_train_epochs", math.inf),
    ("dpo_loss_type", "not_a_loss"),
    ("dpo_weight", -0.1),
    ("dpo_weight", 1.5),
    ("dpo_weight", math.nan),
    ("beta", 0.0),
    ("beta", -0.1),
    ("beta", math.nan),
    ("label_smoothing", 0.5),
    ("label_smoothing", -0.1),
    ("label_smoothing", math.nan),
    ("projection_dim", 0),
    ("projection_dim", -8),
    ("selection_size", 0),
    ("selection_fraction", 0.0),
    ("selection_fraction", 1.5),
    ("selection_fraction", None),
    ("selection_fraction", math.nan),
    ("warmup_fraction", 0.0),
    ("warmup_fraction", 1.01),
    ("warmup_fraction", math.nan),
    ("feature_batch_size", 0),
    ("chunk_size", 0),
    ("feature_max_length", 1),
    ("selection_dir", ""),
    ("prefilter_fraction", 0.0),
    ("prefilter_fraction", 1.5),
    ("prefilter_fraction", math.nan),
    ("prefilter_fraction", 0.01),  # keeps fewer rows than the default selection_fraction=0.05 selects
    ("num_feature_checkpoints", 0),
    ("num_feature_checkpoints", 1.5),
    ("num_feature_checkpoints", True),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RoseConfig(**{field: value})


def test_every_field_has_a_bad_value_test_or_is_free():
    # Fields without constraints: any value of the right type is meaningful.
    free = {"projection_seed", "warmup_seed", "overwrite", "source_column", "report", "store_pool_features"}
    tested = {field for field, _ in BAD_VALUES}
    names = {f.name for f in dataclasses.fields(RoseConfig)}
    assert names - free == tested, "a new constrained field needs a row in BAD_VALUES"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"selection_size": 7, "selection_fraction": None},  # a size makes the fraction irrelevant
        {"selection_fraction": 1.0, "prefilter_fraction": None},  # the whole pool: no first stage
        {"warmup_fraction": 1.0},
        {"feature_max_length": None},
        {"feature_max_length": 2},
        {"dpo_loss_type": "ipo", "label_smoothing": 0.0},
        {"validation_objective": "sft", "projection": "none", "preconditioner": "sgd", "feature_dtype": "int8"},
        {"validation_objective": "dpo+sft", "scoring": "paper"},
        {"dpo_weight": 0.0},
        {"dpo_weight": 1.0},
        {"validation_objective": "sft", "scoring": "robust"},
        {"prefilter_fraction": 0.05},
        {"prefilter_fraction": 1.0},
        {"num_feature_checkpoints": 1},
        {"num_feature_checkpoints": 8},  # more than the warmup saves: every save
        {"prefilter_fraction": 0.01, "selection_size": 3},  # the pool size decides (SelectionPipeline checks it)
    ],
)
def test_good_values_are_accepted(kwargs):
    config = RoseConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_prefilter_smaller_than_the_selection_names_both_fields():
    with pytest.raises(ValueError, match="prefilter_fraction=0.1 keeps fewer rows than selection_fraction=0.2.*raise"):
        RoseConfig(prefilter_fraction=0.1, selection_fraction=0.2)


def test_defaults_are_the_papers_but_two_deliberate_choices():
    config = RoseConfig()
    assert (config.scoring, config.beta, config.dpo_loss_type) == ("paper", 0.1, "sigmoid")
    assert (config.selection_fraction, config.warmup_fraction, config.subtask_aggregation) == (0.05, 0.05, "max")
    # The two deliberate differences: the sparse sketch, and both validation objectives ranked together.
    assert (config.projection, config.validation_objective, config.dpo_weight) == ("sjlt", "dpo+sft", 0.75)
    assert (config.projection, config.projection_dim, config.projection_seed) == ("sjlt", 8192, 0)
    assert (config.preconditioner, config.subtask_aggregation) == ("adam", "max")
    assert (config.selection_fraction, config.warmup_fraction, config.feature_max_length) == (0.05, 0.05, 2048)
    assert config.to_dict()["selection_size"] is None


def test_every_field_has_help():
    for f in dataclasses.fields(RoseConfig):
        assert f.metadata.get("help"), f"RoseConfig.{f.name} has no help text"


def test_argument_parser_defaults_and_values():
    parser = HfArgumentParser((RoseConfig,))
    (config,) = parser.parse_args_into_dataclasses([])
    assert config == RoseConfig()
    (config,) = parser.parse_args_into_dataclasses(
        ["--selection_dir", "out", "--selection_size", "7", "--feature_max_length", "16", "--report", "false",
         "--validation_objective", "sft", "--beta", "0.25"]
    )
    assert config == RoseConfig(selection_dir="out", selection_size=7, feature_max_length=16, report=False,
                                validation_objective="sft", beta=0.25)
    assert "--projection_dim" in parser.format_help()


def test_argument_parser_rejects_bad_values():
    with pytest.raises(ValueError, match="projection"):
        HfArgumentParser((RoseConfig,)).parse_args_into_dataclasses(["--projection", "bogus"])


def test_yaml_file(tmp_path):
    path = tmp_path / "rose.yaml"
    path.write_text("selection_dir: sel\nselection_fraction: 0.1\nprojection: sjlt\nprojection_dim: 256\nreport: false\n")
    (config,) = HfArgumentParser(RoseConfig).parse_yaml_file(str(path))
    assert config == RoseConfig(selection_dir="sel", selection_fraction=0.1, projection="sjlt", projection_dim=256,
                                report=False)
    path.write_text("feature_dtype: bfloat16\n")
    with pytest.raises(ValueError, match="feature_dtype"):
        HfArgumentParser(RoseConfig).parse_yaml_file(str(path))


def test_old_names_are_no_fields_and_old_runs_still_report(tmp_path):
    """The old names are neither fields nor keys of `to_dict()` (a parser of RoseConfig and SFTConfig would see them
    twice); a selection recorded with them still rebuilds its config."""
    import warnings
    from types import SimpleNamespace

    from rose_hf.report import config_from_output_dir
    from rose_hf.rose_config import DEPRECATED_NAMES

    names = {f.name for f in dataclasses.fields(RoseConfig)}
    assert not names & set(DEPRECATED_NAMES) and set(DEPRECATED_NAMES.values()) <= names
    assert set(RoseConfig().to_dict()) == names
    recorded = SimpleNamespace(info={"config": {"loss_type": "ipo", "max_length": 64, "seed": 2}})  # selection.json
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated name is used on the way
        config = config_from_output_dir(str(tmp_path), recorded)
    assert (config.dpo_loss_type, config.feature_max_length, config.warmup_seed) == ("ipo", 64, 2)
    assert config.selection_dir == str(tmp_path)


def test_a_run_recorded_before_the_first_stage_existed_reports_without_it(tmp_path):
    """Today's default keeps 20% of the pool; a selection.json from before `prefilter_fraction` existed ran on every
    row (and may select more than 20%), so its rebuilt config must say so, while a recorded value is kept."""
    from types import SimpleNamespace

    from rose_hf.report import config_from_output_dir

    assert RoseConfig().prefilter_fraction == 0.2
    old = SimpleNamespace(info={"config": {"selection_fraction": 0.5}})
    config = config_from_output_dir(str(tmp_path), old)
    assert config.prefilter_fraction is None and config.selection_fraction == 0.5
    new = SimpleNamespace(info={"config": {"prefilter_fraction": 0.4}})
    assert config_from_output_dir(str(tmp_path), new).prefilter_fraction == 0.4

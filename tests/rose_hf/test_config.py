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
    ("loss_type", "not_a_loss"),
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
    ("max_length", 1),
    ("output_dir", ""),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RoseConfig(**{field: value})


def test_every_field_has_a_bad_value_test_or_is_free():
    # Fields without constraints: any value of the right type is meaningful.
    free = {"projection_seed", "seed", "overwrite", "source_column", "report"}
    tested = {field for field, _ in BAD_VALUES}
    names = {f.name for f in dataclasses.fields(RoseConfig)}
    assert names - free == tested, "a new constrained field needs a row in BAD_VALUES"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"selection_size": 7, "selection_fraction": None},  # a size makes the fraction irrelevant
        {"selection_fraction": 1.0},
        {"warmup_fraction": 1.0},
        {"max_length": None},
        {"max_length": 2},
        {"loss_type": "ipo", "label_smoothing": 0.0},
        {"validation_objective": "sft", "projection": "none", "preconditioner": "sgd", "feature_dtype": "int8"},
        {"validation_objective": "dpo+sft", "scoring": "paper"},
        {"validation_objective": "sft", "scoring": "robust"},
    ],
)
def test_good_values_are_accepted(kwargs):
    config = RoseConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_defaults_are_the_papers_but_two_measured_choices():
    config = RoseConfig()
    assert (config.scoring, config.beta, config.loss_type) == ("paper", 0.1, "sigmoid")
    assert (config.selection_fraction, config.warmup_fraction, config.subtask_aggregation) == (0.05, 0.05, "max")
    # The two measured differences (README): the sparse sketch, and both validation objectives ranked together.
    assert (config.projection, config.validation_objective) == ("sjlt", "dpo+sft")
    assert (config.projection, config.projection_dim, config.projection_seed) == ("sjlt", 8192, 0)
    assert (config.preconditioner, config.subtask_aggregation) == ("adam", "max")
    assert (config.selection_fraction, config.warmup_fraction, config.max_length) == (0.05, 0.05, 2048)
    assert config.to_dict()["selection_size"] is None


def test_every_field_has_help():
    for f in dataclasses.fields(RoseConfig):
        assert f.metadata.get("help"), f"RoseConfig.{f.name} has no help text"


def test_argument_parser_defaults_and_values():
    parser = HfArgumentParser((RoseConfig,))
    (config,) = parser.parse_args_into_dataclasses([])
    assert config == RoseConfig()
    (config,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "out", "--selection_size", "7", "--max_length", "16", "--report", "false",
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
    path.write_text("output_dir: sel\nselection_fraction: 0.1\nprojection: sjlt\nprojection_dim: 256\nreport: false\n")
    (config,) = HfArgumentParser(RoseConfig).parse_yaml_file(str(path))
    assert config == RoseConfig(selection_dir="sel", selection_fraction=0.1, projection="sjlt", projection_dim=256,
                                report=False)
    path.write_text("feature_dtype: bfloat16\n")
    with pytest.raises(ValueError, match="feature_dtype"):
        HfArgumentParser(RoseConfig).parse_yaml_file(str(path))

"""Bad input: each case gets a clear error naming the field and the fix, raised before any work starts; bad ROWS in a
large pool are flagged, scored lowest and never selected, while the other rows are scored as if they were alone."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from accelerate import PartialState
from datasets import Dataset
from helpers import make_lora_model, pool_dataset, tiny_pairs

from rose_hf import RoseConfig
from rose_hf.cache.store import STATUS_EMPTY, STATUS_NONFINITE, STATUS_OK
from rose_hf.data import pad_token_id, prepare_sft_dataset
from rose_hf.errors import CacheWriteError
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.pipeline import SelectionPipeline
from rose_hf.scoring.similarity import INVALID_SCORE

PartialState()
SMALL = dict(prefilter_fraction=None, projection_dim=64, chunk_size=4, feature_batch_size=3, feature_max_length=64, report=False, preconditioner="sgd")


def pool_rows(n=6):
    pool, _ = pool_dataset(n)
    return pool


@pytest.mark.parametrize(
    "pool,match",
    [
        (Dataset.from_dict({"prompt": [], "completion": []}), "`train_dataset` is empty"),
        (Dataset.from_dict({"question": ["a"], "answer": ["b"]}), "rename your columns to `prompt` \\+ `completion`"),
        (Dataset.from_dict({"prompt": ["a"], "response": ["b"]}), "none of TRL's SFT formats"),
        (Dataset.from_dict({"prompt": ["a"], "completion": ["b"], "text": ["c"]}), "mixes formats"),
        (Dataset.from_dict({"input_ids": [[1, 2]]}), "already tokenized"),
    ],
    ids=["empty", "misnamed", "missing-completion", "two-formats", "tokenized"],
)
def test_bad_pools_are_refused_before_work(tmp_path, pool, match):
    with pytest.raises(ValueError, match=match):
        SelectionPipeline(pool, tiny_pairs(), RoseConfig(selection_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused input"


def test_mixed_row_formats_are_refused(tmp_path):
    pool = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]},
         {"messages": [{"role": "user", "content": "what"}, {"role": "assistant", "content": "no"}]}]
    )  # fmt: skip
    SelectionPipeline(pool, tiny_pairs(), RoseConfig(selection_dir=str(tmp_path)))  # a valid conversational pool
    mixed = Dataset.from_dict({"prompt": ["hello", "what"], "completion": [" yes", " no"]})
    pairs = Dataset.from_list(
        [{"prompt": "hello", "chosen": " yes", "rejected": " no"},
         {"prompt": "what", "chosen": " no", "rejected": " yes"}]
    )  # fmt: skip
    SelectionPipeline(mixed, pairs, RoseConfig(selection_dir=str(tmp_path)))
    conversational_pairs = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
         "chosen": [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]],
         "rejected": [[{"role": "assistant", "content": "y"}], [{"role": "assistant", "content": "x"}]]}
    )  # fmt: skip
    SelectionPipeline(mixed, conversational_pairs, RoseConfig(selection_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "pairs,match",
    [
        (Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}), "`preference_dataset` is empty"),
        (Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}), "lacks column\\(s\\) \\['rejected'\\]"),
        (Dataset.from_dict({"prompt": ["a"], "better": ["b"], "worse": ["c"]}), "needs `chosen` and `rejected`"),
        (Dataset.from_dict({"prompt": ["a", "b"], "chosen": [" x", " y"], "rejected": [" z", " y"]}),
         "row 1: `chosen` is identical to `rejected`"),
        (Dataset.from_dict({"prompt": ["a"], "chosen": [" "], "rejected": [" x"]}), "row 0 has an empty `chosen`"),
        (Dataset.from_dict({"prompt": ["a", "b"], "chosen": [" x", " y"], "rejected": [" z", " w"],
                            "subtask": ["one", ""]}), "empty `subtask`"),
    ],
    ids=["empty", "missing-rejected", "misnamed", "identical", "empty-chosen", "empty-subtask"],
)
def test_bad_preference_sets_are_refused_before_work(tmp_path, pairs, match):
    with pytest.raises(ValueError, match=match):
        SelectionPipeline(pool_rows(), pairs, RoseConfig(selection_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"selection_fraction": 0.0}, "selection_fraction"), ({"selection_fraction": 1.5}, "selection_fraction"),
     ({"selection_size": 0}, "selection_size"), ({"projection_dim": 0}, "projection_dim"),
     ({"projection_dim": -8}, "projection_dim"), ({"dpo_loss_type": "aot"}, "dpo_loss_type"),
     ({"validation_objective": "kto"}, "validation_objective")],
)  # fmt: skip
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RoseConfig(**kwargs)


def test_selection_size_larger_than_the_pool(tmp_path):
    with pytest.raises(ValueError, match="selection_size=100 exceeds the pool's 6 rows"):
        SelectionPipeline(pool_rows(), tiny_pairs(), RoseConfig(selection_dir=str(tmp_path), selection_size=100))


@pytest.mark.parametrize(
    "make_path,match",
    [(lambda root: root / "a_file" / "rose", "cannot be a folder: its parent .*a_file.* is a file"),
     (lambda root: root / "a_file", "cannot be a folder: it is a file"),
     (lambda root: str(root / "ro") + "\0se", "NUL byte"),
     (lambda root: root / ("x" * 300) / "rose", "300 bytes, over this filesystem's limit of 255"),
     (lambda root: root / "locked" / "new" / "rose", "is not writable: .*locked.* cannot be used to create")],
    ids=["under-a-file", "a-file", "nul-byte", "name-too-long", "read-only-parent"],
)  # fmt: skip
def test_bad_output_dir_is_refused_when_built_and_nothing_is_written(tmp_path, monkeypatch, make_path, match):
    (tmp_path / "a_file").write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the OS answer for `locked` as it would to another user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    try:
        with pytest.raises(ValueError, match=match):
            SelectionPipeline(pool_rows(), tiny_pairs(), RoseConfig(selection_dir=str(make_path(tmp_path)), **SMALL))
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "nothing may be written for a refused input"
    finally:
        locked.chmod(0o755)


def test_unwritable_output_dir_found_at_start_is_still_refused(tokenizer, tmp_path):
    """Between construction and the first step the folder can become unwritable: the write probe then says so."""
    pipeline = SelectionPipeline(pool_rows(), tiny_pairs(), RoseConfig(selection_dir=str(tmp_path / "rose"), **SMALL))
    (tmp_path / "rose").write_text("now a file")
    with pytest.raises(CacheWriteError, match="is not writable.*choose a folder"):
        pipeline.prepare(make_lora_model(tokenizer), tokenizer)


def test_tokenizer_without_pad_token_pads_with_eos_as_trl_does(tokenizer):
    copy = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>", bos_token="<bos>",
                           unk_token="<unk>")  # fmt: skip
    assert copy.pad_token is None
    assert pad_token_id(copy) == copy.eos_token_id


def test_rows_over_max_length_are_truncated_and_counted(tokenizer):
    pool = pool_rows(8)
    lengths = [len(tokenizer(p + c)["input_ids"]) for p, c in zip(pool["prompt"], pool["completion"])]
    max_length = sorted(lengths)[4]
    rows = prepare_sft_dataset(pool, tokenizer, max_length=max_length)
    assert all(len(ids) <= max_length for ids in rows["input_ids"])
    # +1 for the EOS SFTTrainer appends to standard completions
    assert sum(rows["rose_truncated"]) == sum(length + 1 > max_length for length in lengths) > 0


def _score(tokenizer, model, pool, output_dir):
    pairs = pool_dataset(6)[1].validation.select(range(4))  # no "hello" in them: the NaN stays in the pool row
    pipeline = SelectionPipeline(pool, pairs, RoseConfig(selection_dir=output_dir, selection_size=2, **SMALL))
    pipeline.prepare(model, tokenizer)
    pipeline.featurize(model, TrainingCheckpoint(1, [1.0], None))
    return pipeline.select(), pipeline.store.checkpoint(1).pool_status()


def test_bad_rows_are_flagged_and_the_others_scored_as_if_alone(tokenizer, tmp_path):
    model = make_lora_model(tokenizer, seed=2)
    good = pool_rows(6)
    bad_rows = [
        {**good[0], "prompt": "hello world", "completion": " yes"},  # its token "hello" will carry NaN
        {**good[1], "completion": "   "},  # empty completion: nothing to learn
        {**good[2], "prompt": " ".join(["sort"] * 80), "completion": " 1"},  # completion fully truncated
    ]
    pool = Dataset.from_list([bad_rows[0], *good, bad_rows[1], bad_rows[2]])
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("hello")] = float("nan")

    result, status = _score(tokenizer, model, pool, str(tmp_path / "mixed"))
    assert status.tolist() == [STATUS_NONFINITE] + [STATUS_OK] * 6 + [STATUS_EMPTY, STATUS_EMPTY]
    assert np.isfinite(result.scores).all()
    assert (result.scores[[0, 7, 8]] == INVALID_SCORE).all()
    assert not set(result.selected_indices) & {0, 7, 8}

    alone, _ = _score(tokenizer, model, good, str(tmp_path / "alone"))
    # Alone, the rows are padded to other lengths: float32 sums in another order (2e-7 apart on an Intel Xeon).
    np.testing.assert_allclose(result.scores[1:7], alone.scores, rtol=1e-4, atol=1e-6)


# --- every int/float field follows the rule of the command line -------------------------------------------------
def _typed_fields(kind):
    # The annotations as written: a parser built earlier in this process replaced `Field.type` (see below).
    written = RoseConfig.__annotations__
    return [f for f in dataclasses.fields(RoseConfig) if kind in [p.strip() for p in written[f.name].split("|")]]


def test_checks_hold_after_an_argument_parser_rewrote_the_field_types():
    """HfArgumentParser replaces each `Field.type` of the class in place (`int | None` -> `int`); the checks of a
    RoseConfig built afterwards, in the same process, must not change."""
    from transformers import HfArgumentParser

    HfArgumentParser(RoseConfig)
    assert dataclasses.fields(RoseConfig)[0].type is str  # what the parser did, and the checks must survive
    assert RoseConfig(projection_dim=" 4096 ").projection_dim == 4096
    assert RoseConfig(selection_size=None, feature_max_length=None).selection_size is None
    with pytest.raises(ValueError, match="projection_dim=2.5 .*must be an integer"):
        RoseConfig(projection_dim=2.5)


def test_numeric_strings_are_numbers_for_every_int_and_float_field():
    from rose_hf.cli import parse

    valid = {"selection_fraction": 0.1, "warmup_fraction": 0.1, "beta": 0.2, "label_smoothing": 0.1,
             "selection_size": 3, "feature_max_length": 64, "final_num_train_epochs": 3.0,
             "prefilter_fraction": 0.5}  # fmt: skip
    int_fields, float_fields = _typed_fields("int"), _typed_fields("float")
    assert {f.name for f in int_fields} >= {"projection_dim", "selection_size", "chunk_size", "warmup_seed"}
    assert {f.name for f in float_fields} >= {"beta", "selection_fraction", "warmup_fraction"}
    values, flags = {}, ["--bf16", "false", "--use_cpu", "true"]
    for f in int_fields + float_fields:
        value = values[f.name] = valid.get(f.name, f.default if f.default is not None else 1)
        config = RoseConfig(**{f.name: f" {value} "})  # a string, as a YAML recipe or an environment variable gives
        assert getattr(config, f.name) == value and type(getattr(config, f.name)) is type(value), f.name
        flags += [f"--{f.name}", str(value)]
    # The same values as the command line: HfArgumentParser parses each flag to the number Python now gets.
    parsed = parse(flags)[1]
    assert {name: getattr(parsed, name) for name in values} == values


@pytest.mark.parametrize(
    "kwargs,match",
    [({"selection_size": 2.5}, "selection_size=2.5 .*must be an integer, e.g. selection_size=2"),
     ({"projection_dim": "8192.5"}, "projection_dim='8192.5' .*must be an integer"),
     ({"projection_dim": None}, "projection_dim=None is not allowed"),
     ({"chunk_size": True}, "chunk_size=True .*must be an integer"),
     ({"beta": "strong"}, "beta='strong' .*must be a finite number"),
     ({"beta": float("inf")}, "beta=inf .*must be a finite number"),
     ({"selection_fraction": float("nan")}, "selection_fraction=nan .*must be a finite number"),
     ({"overwrite": "sometimes"}, "overwrite='sometimes' .*must be true or false"),
     ({"selection_dir": 7}, "selection_dir=7 .*must be a string")],
    ids=["fractional-size", "fractional-string", "none", "bool-as-int", "word", "inf", "nan", "bool-word", "dir-int"],
)  # fmt: skip
def test_values_of_the_wrong_kind_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoseConfig(**kwargs)


def test_fractional_selection_size_fails_before_any_model(tmp_path):
    from rose_hf.trainer.callback import RoseDataSelector

    with pytest.raises(ValueError, match="selection_size=2.5"):
        RoseDataSelector(pool_rows(), tiny_pairs(), RoseConfig(selection_dir=str(tmp_path / "rose"), selection_size=2.5))
    assert not any(tmp_path.iterdir())


# --- data sets that are not in-memory Datasets ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["train_dataset", "preference_dataset"])
def test_streaming_datasets_are_refused_with_the_fix(tmp_path, which):
    from datasets import load_dataset

    pool, pairs = pool_rows(), tiny_pairs()
    data = pool if which == "train_dataset" else pairs
    data.to_json(str(tmp_path / "data.jsonl"), lines=True)
    streamed = load_dataset("json", data_files=str(tmp_path / "data.jsonl"), split="train", streaming=True)
    for iterable in (data.to_iterable_dataset(), streamed):
        args = (iterable, pairs) if which == "train_dataset" else (pool, iterable)
        match = f"`{which}` is an IterableDataset.*Dataset.from_generator.*streaming=False"
        with pytest.raises(ValueError, match=match):
            SelectionPipeline(*args, RoseConfig(selection_dir=str(tmp_path / "rose")))
    assert not (tmp_path / "rose").exists()
    # The fix the message gives works, and gives the very rows back.
    iterable = data.to_iterable_dataset()
    fixed = Dataset.from_generator(lambda: (yield from iterable), features=iterable.features)
    assert fixed.to_list() == data.to_list()
    SelectionPipeline(*((fixed, pairs) if which == "train_dataset" else (pool, fixed)), RoseConfig())


def test_split_dicts_and_plain_lists_are_refused_with_the_fix():
    from datasets import DatasetDict

    with pytest.raises(ValueError, match=r"`train_dataset` is a DatasetDict with splits \['train'\].*\['train'\]"):
        SelectionPipeline(DatasetDict({"train": pool_rows()}), tiny_pairs(), RoseConfig())
    with pytest.raises(ValueError, match="`preference_dataset` is a list, not a `datasets.Dataset`.*from_list"):
        SelectionPipeline(pool_rows(), tiny_pairs().to_list(), RoseConfig())


# --- one rule for rows without a training target -------------------------------------------------------------------
def _turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_every_kind_of_blank_target_is_flagged_scored_lowest_and_never_selected(tokenizer, tmp_path):
    from rose_hf.data import blank_target

    good = pool_rows(6)
    text_blanks = [{**good[0], "completion": None}, {**good[1], "completion": ""}, {**good[2], "completion": " \n"}]
    pool = Dataset.from_list([*good, *text_blanks])
    assert [blank_target(row, "prompt_completion") for row in pool] == [False] * 6 + [True] * 3
    model = make_lora_model(tokenizer, seed=2)
    result, status = _score(tokenizer, model, pool, str(tmp_path / "text"))
    assert status.tolist() == [STATUS_OK] * 6 + [STATUS_EMPTY] * 3
    assert (result.scores[6:] == INVALID_SCORE).all() and not set(result.selected_indices) & {6, 7, 8}
    alone, _ = _score(tokenizer, model, good, str(tmp_path / "alone"))
    np.testing.assert_allclose(result.scores[:6], alone.scores, rtol=1e-4, atol=1e-6)  # float32, other padding

    conversations = [
        _turns(("user", "sort 3 1 2"), ("assistant", "1 2 3")),
        _turns(("user", "what is the answer ?"), ("assistant", "yes")),
        _turns(("user", "hello"), ("assistant", "world"), ("user", "good ?"), ("assistant", "yes good")),
        None,  # messages=None
        [],  # no turn at all
        _turns(("user", "hello"), ("assistant", "")),  # an empty assistant message
        _turns(("user", "hello"), ("assistant", "world"), ("user", "and ?"), ("assistant", "  ")),  # one blank turn
        _turns(("user", "hello"), ("user", "world")),  # no assistant turn
    ]
    chat = Dataset.from_list([{"messages": m} for m in conversations])
    flagged = [blank_target(row, "messages") for row in chat]
    assert flagged == [False] * 3 + [True] * 5
    result, status = _score(tokenizer, model, chat, str(tmp_path / "chat"))
    assert status.tolist() == [STATUS_OK] * 3 + [STATUS_EMPTY] * 5
    assert (result.scores[3:] == INVALID_SCORE).all() and np.isfinite(result.scores[:3]).all()
    assert set(result.selected_indices) <= {0, 1, 2}
    # A tool call is a target even without text; a conversational completion follows the same rule.
    call = {"type": "function", "function": {"name": "f"}}
    tool_call = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    assert not blank_target({"messages": _turns(("user", "hi")) + tool_call}, "messages")
    blank_answer = {"prompt": _turns(("user", "hi")), "completion": _turns(("assistant", ""))}
    assert blank_target(blank_answer, "prompt_completion")
    assert blank_target({"text": "  "}, "text") and not blank_target({"text": "hello"}, "text")


def test_a_pool_of_nothing_but_blank_targets_is_refused(tmp_path):
    pool = Dataset.from_dict({"prompt": ["hello", "what"], "completion": [None, " "]})
    with pytest.raises(ValueError, match="Every row of `train_dataset` lacks a training target"):
        SelectionPipeline(pool, tiny_pairs(), RoseConfig(selection_dir=str(tmp_path / "rose")))


def test_blank_conversational_answers_in_pairs_are_refused_like_empty_strings():
    pairs = Dataset.from_dict({"prompt": [_turns(("user", "a")), _turns(("user", "b"))],
                               "chosen": [_turns(("assistant", "x")), _turns(("assistant", " "))],
                               "rejected": [_turns(("assistant", "y")), _turns(("assistant", "x"))]})  # fmt: skip
    with pytest.raises(ValueError, match="`preference_dataset` row 1 has an empty `chosen`"):
        SelectionPipeline(pool_rows(), pairs, RoseConfig())


def test_sharegpt_conversations_are_a_pool_format():
    pool = Dataset.from_list([{"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": v}]}
                              for v in ("world", "")])  # fmt: skip
    from rose_hf.data import blank_target, check_sft_dataset

    assert check_sft_dataset(pool) == "conversations"  # was refused as "mixes formats ... not like row 0"
    assert [blank_target(row, "conversations") for row in pool] == [False, True]

"""Bad input: each case gets a clear error naming the field and the fix, raised before any work starts; bad ROWS in a
large pool are flagged, scored lowest and never selected, while the other rows are scored as if they were alone."""

import numpy as np
import pytest
import torch
from accelerate import PartialState
from datasets import Dataset
from helpers import make_lora_model, pool_dataset, tiny_pairs

from rose_hf import RoseConfig
from rose_hf.checkpoint import TrainingCheckpoint
from rose_hf.data import pad_token_id, prepare_sft_dataset
from rose_hf.pipeline import SelectionPipeline
from rose_hf.scoring import INVALID_SCORE
from rose_hf.store import STATUS_EMPTY, STATUS_NONFINITE, STATUS_OK, StoreError

PartialState()
SMALL = dict(projection_dim=64, chunk_size=4, feature_batch_size=3, max_length=64, report=False, preconditioner="sgd")


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
        SelectionPipeline(pool, tiny_pairs(), RoseConfig(output_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused input"


def test_mixed_row_formats_are_refused(tmp_path):
    pool = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]},
         {"messages": [{"role": "user", "content": "what"}, {"role": "assistant", "content": "no"}]}]
    )  # fmt: skip
    SelectionPipeline(pool, tiny_pairs(), RoseConfig(output_dir=str(tmp_path)))  # a valid conversational pool
    mixed = Dataset.from_dict({"prompt": ["hello", "what"], "completion": [" yes", " no"]})
    pairs = Dataset.from_list(
        [{"prompt": "hello", "chosen": " yes", "rejected": " no"},
         {"prompt": "what", "chosen": " no", "rejected": " yes"}]
    )  # fmt: skip
    SelectionPipeline(mixed, pairs, RoseConfig(output_dir=str(tmp_path)))
    conversational_pairs = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
         "chosen": [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]],
         "rejected": [[{"role": "assistant", "content": "y"}], [{"role": "assistant", "content": "x"}]]}
    )  # fmt: skip
    SelectionPipeline(mixed, conversational_pairs, RoseConfig(output_dir=str(tmp_path)))


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
        SelectionPipeline(pool_rows(), pairs, RoseConfig(output_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"selection_fraction": 0.0}, "selection_fraction"), ({"selection_fraction": 1.5}, "selection_fraction"),
     ({"selection_size": 0}, "selection_size"), ({"projection_dim": 0}, "projection_dim"),
     ({"projection_dim": -8}, "projection_dim"), ({"loss_type": "aot"}, "loss_type"),
     ({"validation_objective": "kto"}, "validation_objective")],
)  # fmt: skip
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RoseConfig(**kwargs)


def test_selection_size_larger_than_the_pool(tmp_path):
    with pytest.raises(ValueError, match="selection_size=100 exceeds the pool's 6 rows"):
        SelectionPipeline(pool_rows(), tiny_pairs(), RoseConfig(output_dir=str(tmp_path), selection_size=100))


def test_unwritable_output_dir(tokenizer, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    pipeline = SelectionPipeline(pool_rows(), tiny_pairs(), RoseConfig(output_dir=str(blocker / "rose"), **SMALL))
    with pytest.raises(StoreError, match="is not writable.*choose a folder"):
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
    pipeline = SelectionPipeline(pool, pairs, RoseConfig(output_dir=output_dir, selection_size=2, **SMALL))
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
    np.testing.assert_allclose(result.scores[1:7], alone.scores, rtol=1e-6, atol=1e-7)

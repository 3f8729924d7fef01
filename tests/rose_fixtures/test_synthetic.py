"""Tests for the synthetic benchmark generator: determinism, exact composition, answers, leakage, masks, vocabulary."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rose_fixtures.tasks import (
    FAMILIES,
    SUBTASKS,
    SyntheticTask,
    SyntheticTaskConfig,
    answer,
    format_prompt,
    make_synthetic_task,
    parse_prompt,
    subtask_of,
    vocabulary,
    wrong_answer,
)
from rose_fixtures.tiny import build_tokenizer

SPLITS = ("pool", "validation", "test_pairs", "test_prompts", "pretrain")


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return make_synthetic_task()


def _split_pretrain_text(text: str) -> tuple[str, str]:
    # Prompts end with the first " ." and the completion follows it.
    cut = text.index(" .") + 2
    return text[:cut], text[cut:]


def test_answers_by_hand() -> None:
    assert answer("sort", [3, 1, 4, 2]) == " 1 2 3 4"
    assert wrong_answer("sort", [3, 1, 4, 2]) == " 4 3 2 1"
    assert answer("reverse", [3, 1, 4]) == " 4 1 3"
    assert wrong_answer("reverse", [3, 1, 4]) == " 3 1 4"
    assert answer("add", [35, 12]) == " 4 7"
    assert answer("add", [9, 9]) == " 1 8"
    assert wrong_answer("add", [9, 9]) == " 1 9"
    assert answer("max", [3, 7, 2]) == " 7"
    assert answer("min", [3, 7, 2]) == " 2"
    assert answer("count", [3, 7, 2, 2, 0]) == " 5"
    assert format_prompt("sort", [3, 1, 4, 2]) == "sort the list 3 1 4 2 ."
    assert format_prompt("add", [35, 7]) == "add 3 5 and 7 ."
    assert subtask_of("sort", [1, 2, 3, 4]) == "short" and subtask_of("sort", [1, 2, 3, 4, 5]) == "long"
    assert subtask_of("add", [12, 34]) == "no_carry" and subtask_of("add", [15, 5]) == "carry"
    with pytest.raises(ValueError, match="family"):
        answer("divide", [1, 2])
    with pytest.raises(ValueError, match="add"):
        answer("add", [1, 2, 3])


@pytest.mark.parametrize(
    ("family", "numbers"),
    [("sort", [0, 9, 5]), ("reverse", [1, 2, 3, 4, 5, 6]), ("add", [0, 99]), ("max", [4, 4, 1]),
     ("min", [7, 8, 9, 0]), ("count", [5, 5, 5])],
)  # fmt: skip
def test_parse_prompt_round_trips(family: str, numbers: list[int]) -> None:
    assert parse_prompt(format_prompt(family, numbers)) == (family, numbers)


def test_same_seed_same_datasets_other_seed_differs(task: SyntheticTask) -> None:
    again = make_synthetic_task(SyntheticTaskConfig(seed=0))
    other = make_synthetic_task(SyntheticTaskConfig(seed=1))
    for split in SPLITS:
        assert getattr(task, split).to_dict() == getattr(again, split).to_dict(), split
        assert getattr(task, split).to_dict() != getattr(other, split).to_dict(), split


def test_default_pool_composition_is_exact(task: SyntheticTask) -> None:
    assert len(task.pool) == 4000
    counts = Counter(task.pool["source"])
    expected = {"sort/correct": 160, "sort/wrong": 160}
    expected.update({f"{family}/correct": 736 for family in ("reverse", "add", "max", "min", "count")})
    assert counts == expected
    assert task.config.pool_composition() == expected
    # Labels agree with the source string.
    for family, correct, source in zip(task.pool["family"], task.pool["correct"], task.pool["source"]):
        assert source == f"{family}/{'correct' if correct else 'wrong'}"


def test_uneven_pool_composition_other_target() -> None:
    config = SyntheticTaskConfig(
        target_family="add", pool_size=1003, target_correct_fraction=0.05, target_wrong_fraction=0.03,
        n_test_pairs=21, n_test_prompts=7, n_pretrain=61, seed=3,
    )  # fmt: skip
    task = make_synthetic_task(config)
    # 50 + 30 target rows; the other 923 split 185, 185, 185, 184, 184 in FAMILIES order.
    expected = {"sort/correct": 185, "reverse/correct": 185, "add/correct": 50, "add/wrong": 30, "max/correct": 185,
                "min/correct": 184, "count/correct": 184}  # fmt: skip
    assert Counter(task.pool["source"]) == expected
    assert len(task.validation) == 2 * config.n_per_subtask
    assert Counter(task.validation["subtask"]) == {"no_carry": 5, "carry": 5}
    assert Counter(task.test_pairs["subtask"]) == {"no_carry": 11, "carry": 10}
    assert len(task.test_prompts) == 7
    assert Counter(_split_pretrain_text(t)[0].split()[0] for t in task.pretrain["text"]) == {
        "sort": 13, "reverse": 12, "give": 24, "count": 12
    }  # fmt: skip
    assert int(task.helpful_mask().sum()) == 50 and int(task.harmful_mask().sum()) == 30


def test_pool_rows_are_right_or_systematically_wrong(task: SyntheticTask) -> None:
    for row in task.pool:
        family, numbers = parse_prompt(row["prompt"])
        assert family == row["family"]
        if row["correct"]:
            assert row["completion"] == answer(family, numbers)
        else:
            assert family == "sort"
            assert row["completion"] == wrong_answer(family, numbers) != answer(family, numbers)
            # Independently of the module: the wrong behaviour is a descending sort.
            digits = [int(d) for d in row["prompt"].split() if d.isdigit()]
            assert row["completion"] == " " + " ".join(str(d) for d in sorted(digits, reverse=True))
    assert task.pool["id"] == list(range(len(task.pool)))


def test_pool_is_shuffled(task: SyntheticTask) -> None:
    head = task.pool.select(range(100))
    assert len(set(head["family"])) == len(FAMILIES)
    # Target rows are spread over the pool, not bunched at one end.
    positions = np.flatnonzero(task.helpful_mask() | task.harmful_mask())
    assert positions.min() < 400 and positions.max() > 3600


@pytest.mark.parametrize("split", ["validation", "test_pairs"])
def test_preference_pairs(task: SyntheticTask, split: str) -> None:
    data = getattr(task, split)
    assert data.column_names == ["prompt", "chosen", "rejected", "subtask"]
    for row in data:
        family, numbers = parse_prompt(row["prompt"])
        assert family == "sort"
        assert row["chosen"] == answer(family, numbers)
        assert row["rejected"] == wrong_answer(family, numbers)
        assert row["rejected"] != row["chosen"]
        assert row["chosen"] == " " + " ".join(str(d) for d in sorted(numbers))
        # short = 3-4 numbers, long = 5-6.
        assert row["subtask"] == ("short" if len(numbers) <= 4 else "long")
        assert 3 <= len(numbers) <= 6
    n_each = 5 if split == "validation" else 100
    assert Counter(data["subtask"]) == {"short": n_each, "long": n_each}


def test_test_prompts_have_correct_references(task: SyntheticTask) -> None:
    assert task.test_prompts.column_names == ["prompt", "reference"]
    assert len(task.test_prompts) == 100
    for row in task.test_prompts:
        family, numbers = parse_prompt(row["prompt"])
        assert family == "sort"
        assert row["reference"] == " " + " ".join(str(d) for d in sorted(numbers))


def test_pretrain_is_all_correct_and_balanced(task: SyntheticTask) -> None:
    assert len(task.pretrain) == 3000
    families = Counter()
    for text in task.pretrain["text"]:
        prompt, completion = _split_pretrain_text(text)
        family, numbers = parse_prompt(prompt)
        assert completion == answer(family, numbers)
        families[family] += 1
    # The target family is left out by default: the base model learns the format, not the target task.
    assert families == {family: 600 for family in FAMILIES if family != "sort"}


def test_pretrain_can_include_the_target() -> None:
    task = make_synthetic_task(SyntheticTaskConfig(pool_size=400, n_pretrain=60, pretrain_target=True))
    families = Counter(parse_prompt(_split_pretrain_text(t)[0])[0] for t in task.pretrain["text"])
    assert families == {family: 10 for family in FAMILIES}


def test_no_prompt_is_shared_between_splits(task: SyntheticTask) -> None:
    prompts = {
        "pool": list(task.pool["prompt"]),
        "validation": list(task.validation["prompt"]),
        "test_pairs": list(task.test_pairs["prompt"]),
        "test_prompts": list(task.test_prompts["prompt"]),
        "pretrain": [_split_pretrain_text(t)[0] for t in task.pretrain["text"]],
    }
    for name, values in prompts.items():
        assert len(set(values)) == len(values), f"duplicate prompts inside {name}"
    everything = [p for values in prompts.values() for p in values]
    assert len(set(everything)) == len(everything)


def test_masks_match_labels(task: SyntheticTask) -> None:
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    assert helpful.dtype == bool and helpful.shape == (len(task.pool),)
    assert int(helpful.sum()) == 160 and int(harmful.sum()) == 160
    assert not (helpful & harmful).any()
    sources = np.array(list(task.pool["source"]))
    np.testing.assert_array_equal(helpful, sources == "sort/correct")
    np.testing.assert_array_equal(harmful, sources == "sort/wrong")


def _all_texts(task: SyntheticTask) -> list[str]:
    texts = list(task.pretrain["text"])
    texts += [p + c for p, c in zip(task.pool["prompt"], task.pool["completion"])]
    for pairs in (task.validation, task.test_pairs):
        texts += [p + c + r for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]
    texts += [p + r for p, r in zip(task.test_prompts["prompt"], task.test_prompts["reference"])]
    return texts


def test_vocabulary_tokenizes_everything_without_unk(task: SyntheticTask) -> None:
    tokenizer = build_tokenizer(vocabulary())
    texts = _all_texts(task) + _all_texts(make_synthetic_task(SyntheticTaskConfig(target_family="add", seed=2)))
    unk = tokenizer.unk_token_id
    for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        assert unk not in ids, text
    # Whitespace words of the texts are exactly the vocabulary: nothing missing, nothing unused.
    assert {word for text in texts for word in text.split()} == set(vocabulary())
    # The check can fail: drop one word and its prompts tokenize to <unk>.
    partial = build_tokenizer([w for w in vocabulary() if w != "largest"])
    assert unk in partial("give the largest number in the list 1 2 3 .", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_can_be_the_target(family: str) -> None:
    config = SyntheticTaskConfig(target_family=family, pool_size=200, n_test_pairs=10, n_test_prompts=5, n_pretrain=60)
    task = make_synthetic_task(config)
    assert int(task.helpful_mask().sum()) == 8 and int(task.harmful_mask().sum()) == 8
    assert Counter(task.validation["subtask"]) == {subtask: 5 for subtask in SUBTASKS[family]}
    for row in task.validation:
        _, numbers = parse_prompt(row["prompt"])
        assert row["chosen"] == answer(family, numbers) != row["rejected"]
        assert subtask_of(family, numbers) == row["subtask"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_family": "divide"}, "target_family"),
        ({"target_correct_fraction": -0.1}, "target_correct_fraction"),
        ({"target_correct_fraction": 1.0}, "target_correct_fraction"),
        ({"target_wrong_fraction": 1.5}, "target_wrong_fraction"),
        ({"target_correct_fraction": 0.6, "target_wrong_fraction": 0.4}, "target_wrong_fraction"),
        ({"pool_size": 0}, "pool_size"),
        ({"n_per_subtask": -1}, "n_per_subtask"),
        ({"n_test_pairs": 0}, "n_test_pairs"),
        ({"n_test_prompts": 0}, "n_test_prompts"),
        ({"n_pretrain": 0}, "n_pretrain"),
        ({"pool_size": 2.5}, "pool_size"),
        ({"seed": "zero"}, "seed"),
        # 'add' has only 10,000 distinct prompts: a pool this large would exhaust it.
        ({"pool_size": 100_000}, "pool_size"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticTaskConfig(**kwargs)

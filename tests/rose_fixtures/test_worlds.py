"""Tests for the world families: determinism, exact composition, answers checked by hand, masks, leakage, TRL formats,
the chat template, the evaluation of conversational prompts, and the cached base model."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
from rose_fixtures.worlds import (
    FAMILIES,
    WorldConfig,
    get_family,
    make_world,
    prompt_text,
    skill_prompts,
    world_families,
    world_tokenizer,
)
from rose_hf.data import check_preference_dataset, check_sft_dataset, prepare_preference_dataset, tokenize_sft_example

NEW = tuple(FAMILIES)
SMALL = dict(pool_size=400, n_test_pairs=21, n_test_prompts=10, n_pretrain=120)
SPLITS = ("pool", "validation", "test_pairs", "test_prompts", "pretrain")

# Independent of the module: what each task must answer, written out again.
EXPECTED = {
    "drop_chat": {
        "drop_two": lambda s: s[2:], "copy": lambda s: s, "reverse": lambda s: s[::-1], "first": lambda s: s[:1],
        "last": lambda s: s[-1:], "drop_first": lambda s: s[1:], "drop_last": lambda s: s[:-1],
    },
    "letters_ends": {
        "ends": lambda s: [s[0], s[-1]], "spell": lambda s: s, "backwards": lambda s: s[::-1], "first": lambda s: s[:1],
        "last": lambda s: s[-1:], "count": lambda s: [str(len(s))],
    },
}  # fmt: skip
TWIN = {"drop_chat": lambda s: s[:-2], "letters_ends": lambda s: [s[-1], s[0]]}


@pytest.fixture(scope="module", params=NEW)
def world(request):
    return request.param, make_world(request.param, seed=0, **SMALL)


def _symbols(prompt) -> list[str]:
    # The inputs are the one-character words of the prompt (template words are longer; `.` and `?` are not alnum).
    return [w for w in prompt_text(prompt).split() if len(w) == 1 and w.isalnum()]


def _text(turn) -> str:
    return turn if isinstance(turn, str) else " ".join(m["content"] for m in turn)


def _task_of(family: str, prompt) -> str:
    # The one task whose template the prompt fills with symbols only.
    text = prompt_text(prompt)
    found = []
    for name, spec in get_family(family).tasks.items():
        prefix, suffix = spec.template.split("{}")
        body = text[len(prefix) : len(text) - len(suffix)].split()
        if text.startswith(prefix) and text.endswith(suffix) and body and all(len(w) == 1 for w in body):
            found.append(name)
    assert len(found) == 1, (text, found)
    return found[0]


def test_families_listed_and_unknown_family_rejected() -> None:
    assert world_families() == ("sort", *NEW)
    with pytest.raises(ValueError, match="family='nope'"):
        make_world("nope")
    with pytest.raises(ValueError, match="n_pretrain|pool_size"):
        WorldConfig(family="letters_ends", n_pretrain=10**7)
    with pytest.raises(ValueError, match="target_correct_fraction"):
        WorldConfig(target_correct_fraction=1.5)


def test_sort_world_is_todays_task() -> None:
    ours = make_world("sort", seed=3, pool_size=300, n_pretrain=100, n_test_pairs=10, n_test_prompts=5)
    theirs = make_synthetic_task(
        SyntheticTaskConfig(seed=3, pool_size=300, n_pretrain=100, n_test_pairs=10, n_test_prompts=5)
    )
    for split in SPLITS:
        assert getattr(ours, split).to_dict() == getattr(theirs, split).to_dict(), split


@pytest.mark.parametrize("family", NEW)
def test_same_seed_same_world_other_seed_differs(family: str) -> None:
    a, b, c = (make_world(family, seed=s, **SMALL) for s in (0, 0, 1))
    for split in SPLITS:
        assert getattr(a, split).to_dict() == getattr(b, split).to_dict(), split
        assert getattr(a, split).to_dict() != getattr(c, split).to_dict(), split


def test_composition_and_masks_match_sources(world) -> None:
    family, task = world
    target = get_family(family).target
    counts = Counter(task.pool["source"])
    assert counts == task.config.pool_composition()
    # 4% + 4% of 400; the other 368 rows split evenly over the distractors, the first ones taking the remainder.
    assert counts[f"{target}/correct"] == 16 and counts[f"{target}/wrong"] == 16
    others = [counts[f"{name}/correct"] for name in get_family(family).distractors]
    assert sum(others) == 368 and max(others) - min(others) <= 1
    source = np.array(task.pool["source"])
    assert (task.helpful_mask() == (source == f"{target}/correct")).all()
    assert (task.harmful_mask() == (source == f"{target}/wrong")).all()
    for fam, correct, src in zip(task.pool["family"], task.pool["correct"], task.pool["source"]):
        assert src == f"{fam}/{'correct' if correct else 'wrong'}"
    assert task.pool["id"] == list(range(len(task.pool)))


def test_every_answer_by_hand(world) -> None:
    family, task = world
    target = get_family(family).target
    for row in task.pool:
        symbols = _symbols(row["prompt"])
        assert _task_of(family, row["prompt"]) == row["family"]
        expected = EXPECTED[family][row["family"]](symbols) if row["correct"] else TWIN[family](symbols)
        assert _text(row["completion"]).split() == list(expected), row
        if not row["correct"]:
            assert row["family"] == target and expected != EXPECTED[family][target](symbols)
    for row in task.pretrain:
        name = _task_of(family, row["prompt"])
        assert name != target
        assert _text(row["completion"]).split() == list(EXPECTED[family][name](_symbols(row["prompt"])))
    for row in task.test_prompts:
        symbols = _symbols(row["prompt"])
        assert _task_of(family, row["prompt"]) == target
        assert row["reference"].split() == list(EXPECTED[family][target](symbols))
        assert row["wrong_reference"].split() == list(TWIN[family](symbols))


def test_pairs_differ_and_carry_subtasks(world) -> None:
    family, task = world
    lengths = get_family(family).lengths
    short = set(lengths[: len(lengths) // 2])
    assert Counter(task.validation["subtask"]) == {"short": 5, "long": 5}
    assert Counter(task.test_pairs["subtask"]) == {"short": 11, "long": 10}
    for split in (task.validation, task.test_pairs):
        check_preference_dataset(split, "pairs")  # raises on chosen == rejected or empty rows
        for row in split:
            symbols = _symbols(row["prompt"])
            assert row["subtask"] == ("short" if len(symbols) in short else "long")
            assert _text(row["chosen"]).split() == list(EXPECTED[family][get_family(family).target](symbols))
            assert _text(row["rejected"]).split() == list(TWIN[family](symbols))
            assert row["chosen"] != row["rejected"]


def test_no_target_prompt_leaks(world) -> None:
    family, task = world
    key = lambda p: prompt_text(p)  # noqa: E731
    evaluation = {key(p) for split in (task.validation, task.test_pairs, task.test_prompts) for p in split["prompt"]}
    assert len(evaluation) == len(task.validation) + len(task.test_pairs) + len(task.test_prompts)
    assert not evaluation & {key(p) for p in task.pool["prompt"]}
    assert not evaluation & {key(p) for p in task.pretrain["prompt"]}


def test_trl_formats_and_chat_template(world) -> None:
    family, task = world
    conversational = get_family(family).conversational
    pool = task.pool.select_columns(["prompt", "completion"])
    assert check_sft_dataset(pool, "pool") == "prompt_completion"
    assert check_sft_dataset(task.pretrain, "pretrain") == "prompt_completion"
    assert isinstance(task.pool[0]["prompt"], list) == conversational
    tokenizer = world_tokenizer(family)
    unk = tokenizer.unk_token_id
    for row in pool.select(range(50)):
        tokens = tokenize_sft_example(row, tokenizer, "prompt_completion", max_length=None)
        assert unk not in tokens["input_ids"], row
        answer = [t for t, label in zip(tokens["input_ids"], tokens["labels"]) if label != -100]
        # The loss falls on the answer and the end token (EOS, which is `<|end|>` in the chat family) only.
        assert tokenizer.decode(answer[:-1]).split() == _text(row["completion"]).split()
        assert answer[-1] == tokenizer.eos_token_id
    if conversational:
        rendered = tokenizer.apply_chat_template(task.pool[0]["prompt"] + task.pool[0]["completion"], tokenize=False)
        user, assistant = task.pool[0]["prompt"][0]["content"], task.pool[0]["completion"][0]["content"]
        assert rendered == f"<|user|> {user} <|end|> <|assistant|> {assistant} <|end|> "
        assert tokenizer.eos_token == "<|end|>"
    pairs = prepare_preference_dataset(task.validation, tokenizer, max_length=None)
    for row, pair in zip(task.validation, pairs):
        assert tokenizer.decode(pair["chosen_ids"][:-1]).split() == _text(row["chosen"]).split()
        assert tokenizer.decode(pair["rejected_ids"][:-1]).split() == _text(row["rejected"]).split()
        assert pair["chosen_ids"][-1] == pair["rejected_ids"][-1] == tokenizer.eos_token_id


def test_skill_prompts_cover_every_task() -> None:
    for family in world_families():
        prompts = skill_prompts(family, n=5)
        names = get_family(family).tasks if family != "sort" else ("sort", "reverse", "add", "max", "min", "count")
        assert set(prompts) == set(names)
        assert all(len(rows) == 5 and rows[0]["reference"] for rows in prompts.values())


def test_conversational_generation_and_wrong_match() -> None:
    from rose_fixtures.evaluation import evaluate_model, exact_match, greedy_generations
    from rose_fixtures.tiny import build_model

    task = make_world("drop_chat", seed=0, **SMALL)
    tokenizer = world_tokenizer("drop_chat")
    model = build_model("llama", tokenizer, hidden_size=16, num_layers=1, seed=0)
    prompts = list(task.test_prompts["prompt"])
    rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    generations = greedy_generations(model, tokenizer, prompts, max_new_tokens=4)
    # The messages go through the chat template with the generation prompt: same as generating from its text.
    assert generations == greedy_generations(model, tokenizer, rendered, max_new_tokens=4)
    metrics = evaluate_model(model, tokenizer, task.test_pairs, task.test_prompts, max_new_tokens=4)
    assert metrics["exact_match"] == exact_match(generations, list(task.test_prompts["reference"]))
    assert metrics["wrong_match"] == exact_match(generations, list(task.test_prompts["wrong_reference"]))
    assert metrics["examples"][0]["prompt"] == prompts[0][0]["content"]


@pytest.mark.slow  # pretrains twice (about 5-10 s)
def test_world_base_model_cached_deterministic_and_restores_threads(tmp_path) -> None:
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from rose_fixtures.base_model import world_base_model

    PartialState()  # accelerate's logger needs it

    base = dataclasses.replace(
        get_family("letters_ends").base, hidden_size=16, num_layers=1, epochs=1, n_pretrain=60, batch_size=16
    )
    threads = torch.get_num_threads()
    first = world_base_model("letters_ends", str(tmp_path / "a"), base=base)
    assert torch.get_num_threads() == threads
    second = world_base_model("letters_ends", str(tmp_path / "b"), base=base)
    assert os.path.basename(first) == os.path.basename(second)
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    stamp = os.path.getmtime(os.path.join(first, "DONE"))
    assert world_base_model("letters_ends", str(tmp_path / "a"), base=base) == first  # cached: not rebuilt
    assert os.path.getmtime(os.path.join(first, "DONE")) == stamp
    with open(os.path.join(first, "pretrain.json")) as handle:
        record = json.load(handle)
    assert set(record["skill_exact_match"]) == set(get_family("letters_ends").tasks)
    assert record["final_loss"] > 0 and record["family"] == "letters_ends"

"""The real-data task families: every answer comes from its data package, the twin is wrong and on-topic, the splits
never share a target input, and bad sizes are refused with the field named."""

from __future__ import annotations

import datetime
import re
from decimal import Decimal

import pytest

pytest.importorskip("babel")
pytest.importorskip("num2words")

from babel.dates import format_date  # noqa: E402
from babel.numbers import format_decimal  # noqa: E402
from num2words import num2words  # noqa: E402

from rose_fixtures.real_worlds import RealWorldConfig, make_real_world, real_families  # noqa: E402

SIZES = dict(pool_size=200, n_test_pairs=20, n_test_prompts=20)
_LANGUAGES = {"French": "fr", "German": "de", "Spanish": "es", "Italian": "it", "English": "en"}
_FORMATS = {"German": "de", "English": "en", "French": "fr", "Indian English": "en_IN"}


def _text(turn) -> str:
    return turn if isinstance(turn, str) else turn[-1]["content"]


def _roman(n: int) -> str:  # the textbook rule, written independently of the family's
    numerals = dict(M=1000, CM=900, D=500, CD=400, C=100, XC=90, L=50, XL=40, X=10, IX=9, V=5, IV=4, I=1)
    out = ""
    for letters, value in numerals.items():
        while n >= value:
            out, n = out + letters, n - value
    return out


def _expected(family: str, prompt: str) -> str:
    """The right answer of a prompt, recomputed from the data package by parsing the prompt's text."""
    if family == "dates":
        iso, language = re.fullmatch(r"Write the date (\S+) in (\w+):", prompt).groups()
        return format_date(datetime.date.fromisoformat(iso), "long", locale=_LANGUAGES[language])
    if family == "number_words":
        n, what = re.fullmatch(r"Write the number (\d+) in (.+)\.", prompt).groups()
        if what == "Roman numerals":
            return _roman(int(n))
        return num2words(int(n), lang=_LANGUAGES[what.removesuffix(" words")])
    amount, style = re.fullmatch(r"Write (\S+) in (.+) number format:", prompt).groups()
    return format_decimal(Decimal(amount), locale=_FORMATS[style])


def _twin(family: str, prompt: str) -> str:
    if family == "dates":
        d = datetime.date.fromisoformat(re.search(r"\d{4}-\d\d-\d\d", prompt).group())
        return format_date(datetime.date(d.year, d.day, d.month), "long", locale="fr")
    if family == "number_words":
        return num2words(int(re.search(r"\d+", prompt).group()) + 1, lang="en")
    return format_decimal(Decimal(re.search(r"Write (\S+) in", prompt).group(1)), locale="en")


def _input(prompt: str) -> str:
    return re.search(r"\d[\d.-]*\d", prompt).group()


@pytest.mark.parametrize("family", real_families())
def test_every_answer_is_the_data_packages_and_every_twin_is_wrong(family):
    task = make_real_world(family, seed=1, **SIZES)
    config = task.config
    assert len(task.pool) == 200 and dict(zip(*_counts(task.pool["source"]))) == config.pool_composition()
    target = config.target_family
    for row in task.pool:
        prompt, answer = _text(row["prompt"]), _text(row["completion"]).strip()
        if row["correct"]:
            assert answer == _expected(family, prompt), row
        else:
            assert row["family"] == target and answer == _twin(family, prompt) != _expected(family, prompt), row
    for split in (task.validation, task.test_pairs):
        for row in split:
            prompt = _text(row["prompt"])
            assert _text(row["chosen"]).strip() == _expected(family, prompt)
            assert _text(row["rejected"]).strip() == _twin(family, prompt) != _text(row["chosen"]).strip()
        assert len(set(split["subtask"])) == 2  # pairs in two subtasks
    for row in task.test_prompts:
        prompt = _text(row["prompt"])
        assert row["reference"] == _expected(family, prompt) and row["wrong_reference"] == _twin(family, prompt)
    assert int(task.helpful_mask().sum()) == config.pool_composition()[f"{target}/correct"]
    assert int(task.harmful_mask().sum()) == config.pool_composition()[f"{target}/wrong"]


@pytest.mark.parametrize("family", real_families())
def test_target_inputs_are_never_shared_between_splits_and_the_seed_decides_them(family):
    task = make_real_world(family, seed=0, **SIZES)
    target = task.config.target_family
    splits = {
        "pool": [_input(_text(r["prompt"])) for r in task.pool if r["family"] == target],
        "validation": [_input(_text(p)) for p in task.validation["prompt"]],
        "test_pairs": [_input(_text(p)) for p in task.test_pairs["prompt"]],
        "test_prompts": [_input(_text(p)) for p in task.test_prompts["prompt"]],
    }
    seen: set[str] = set()
    for inputs in splits.values():
        assert len(set(inputs)) == len(inputs) and not seen & set(inputs)
        seen |= set(inputs)
    again = make_real_world(family, seed=0, **SIZES)
    assert again.pool.to_list() == task.pool.to_list() and again.test_prompts.to_list() == task.test_prompts.to_list()
    other = make_real_world(family, seed=1, **SIZES)
    assert other.test_prompts.to_list() != task.test_prompts.to_list()


def test_formats_follow_the_family():
    assert isinstance(make_real_world("number_words", **SIZES).pool[0]["prompt"], list)  # chat messages
    assert isinstance(make_real_world("number_format", **SIZES).pool[0]["prompt"], str)  # plain prompt/completion


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(family="nope"), "family"),
        (dict(pool_size=0), "pool_size"),
        (dict(target_correct_fraction=1.5), "target_correct_fraction"),
        (dict(target_correct_fraction=0.6, target_wrong_fraction=0.5), "target_wrong_fraction"),
        (dict(family="number_words", pool_size=20_000), "pool_size"),
    ],
)
def test_bad_sizes_are_refused_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        RealWorldConfig(**changes)


def _counts(values):
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return list(out), list(out.values())

"""Task families for a real pretrained model (SmolLM2-135M-Instruct), built from well-kept data packages.

Each family is a target task, an on-topic harmful twin (the same prompts with a plausible, systematically wrong
answer), distractor tasks of the same shape, and preference pairs (chosen = right, rejected = the twin's answer) in
two subtasks. Every fact comes from a data package, never from a list typed here:

- `dates` (CLDR through `babel`, plain prompt/completion): write an ISO date as a long French date
  (`2024-03-05` -> `5 mars 2024`); the twin swaps day and month (`3 mai 2024`, the day/month mix-up of numeric dates);
  distractors write the date in German, Spanish, Italian and English. Subtasks: first and second half of the year.
- `number_words` (`num2words`, conversational with the model's chat template): write a number in English words
  (`347` -> `three hundred and forty-seven`); the twin is off by one (`three hundred and forty-eight`); distractors
  write it in French, German, Spanish words and in Roman numerals. Subtasks: two-digit and three-digit numbers.
- `number_format` (CLDR decimal formats through `babel`, plain): write an amount in German number format
  (`1234567.89` -> `1.234.567,89`); the twin uses the English format (`1,234,567.89`, the wrong locale); distractors
  write it in English, French and Indian English formats. Subtasks: whole amounts and amounts with decimals.

A family's splits have the shape of `rose_fixtures.tasks.SyntheticTask` (pool with `family`/`correct`/`source`/
`id`, validation and test pairs with `subtask`, test prompts with `reference` and `wrong_reference`), so the quality
benchmark and the demo treat them like the tiny worlds. Inputs are distinct across every split of the target task.

Example:
```python
>>> from rose_fixtures.real_worlds import make_real_world
>>> task = make_real_world("dates", seed=0, pool_size=400)
>>> int(task.helpful_mask().sum()), int(task.harmful_mask().sum()), len(task.pool)
(32, 32, 400)
```
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from .tasks import SyntheticTask
from .worlds import check_sizes, pool_composition, split_features, to_dataset

# Bump when any family's generation changes (it keys cached benchmark runs).
REAL_WORLD_VERSION = 1


@dataclass(frozen=True)
class RealTask:
    """One task of a family: how an input becomes a prompt text and its answer.

    Args:
        prompt: the prompt text of an input.
        answer: the correct answer.
        wrong: the harmful twin's answer (the target only); None where the twin would not be wrong.
    """

    prompt: Callable[[Any], str]
    answer: Callable[[Any], str]
    wrong: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class RealFamily:
    """A family of real-data tasks over one kind of input.

    Args:
        name: the family's name in `make_real_world`.
        source: the data package(s) its facts come from.
        inputs: every input the family may draw from (drawn without replacement per task).
        target: the key of the target task in `tasks`.
        tasks: every task, target included.
        subtask: the target's subtask of an input (two values).
        conversational: prompts and answers as chat messages (rendered with the model's chat template).
        max_new_tokens: greedy generation limit that fits the longest answer.
    """

    name: str
    source: str
    inputs: Callable[[], list]
    target: str
    tasks: dict[str, RealTask] = field(hash=False)
    subtask: Callable[[Any], str] = field(hash=False)
    conversational: bool = False
    max_new_tokens: int = 16

    @property
    def distractors(self) -> tuple[str, ...]:
        return tuple(name for name in self.tasks if name != self.target)

    @property
    def subtasks(self) -> tuple[str, ...]:
        return tuple(sorted({self.subtask(x) for x in self.inputs()}))


# --- dates: CLDR long date formats -------------------------------------------------------------------------------------
@cache
def _dates() -> list[datetime.date]:
    start = datetime.date(1950, 1, 1)
    return [start + datetime.timedelta(days=i) for i in range((datetime.date(2030, 12, 31) - start).days + 1)]


def _long_date(locale: str) -> Callable[[datetime.date], str]:
    from babel.dates import format_date

    return lambda d: format_date(d, "long", locale=locale)


def _swapped_date(d: datetime.date) -> str | None:
    if d.day > 12 or d.day == d.month:  # no such date, or the same one
        return None
    return _long_date("fr")(datetime.date(d.year, d.day, d.month))


def _date_prompt(language: str) -> Callable[[datetime.date], str]:
    return lambda d: f"Write the date {d.isoformat()} in {language}:"


# --- number words: num2words ------------------------------------------------------------------------------------------
def _numbers() -> list[int]:
    return list(range(21, 1000))


def _words(lang: str) -> Callable[[int], str]:
    from num2words import num2words

    return lambda n: num2words(n, lang=lang)


def _roman(n: int) -> str:
    out = []
    for value, letters in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                           (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):  # fmt: skip
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def _number_prompt(what: str) -> Callable[[int], str]:
    return lambda n: f"Write the number {n} {what}."


# --- number formats: CLDR decimal formats ---------------------------------------------------------------------------
@cache
def _amounts() -> list[Decimal]:
    """20,000 distinct amounts from 1,000 to 10,000,000, half whole, half with two decimals (the last one not 0, which
    CLDR's format would drop), from a fixed stream so every world draws from the same list."""
    rng = random.Random("amounts")
    values: set[Decimal] = set()
    while len(values) < 20_000:
        if len(values) % 2:
            cents = rng.randrange(100_000, 1_000_000_000)
            if cents % 10:
                values.add(Decimal(cents) / 100)
        else:
            values.add(Decimal(rng.randrange(1_000, 10_000_000)))
    return sorted(values)


def _decimal(locale: str) -> Callable[[Decimal], str]:
    from babel.numbers import format_decimal

    return lambda x: format_decimal(x, locale=locale)


def _amount_prompt(style: str) -> Callable[[Decimal], str]:
    return lambda x: f"Write {x} in {style} number format:"


FAMILIES: dict[str, RealFamily] = {
    "dates": RealFamily(
        name="dates",
        source="CLDR date formats (babel)",
        inputs=_dates,
        target="french",
        tasks={
            "french": RealTask(_date_prompt("French"), _long_date("fr"), wrong=_swapped_date),
            "german": RealTask(_date_prompt("German"), _long_date("de")),
            "spanish": RealTask(_date_prompt("Spanish"), _long_date("es")),
            "italian": RealTask(_date_prompt("Italian"), _long_date("it")),
            "english": RealTask(_date_prompt("English"), _long_date("en")),
        },
        subtask=lambda d: "first_half" if d.month <= 6 else "second_half",
        max_new_tokens=16,
    ),
    "number_words": RealFamily(
        name="number_words",
        source="num2words",
        inputs=_numbers,
        target="english",
        tasks={
            "english": RealTask(_number_prompt("in English words"), _words("en"), wrong=lambda n: _words("en")(n + 1)),
            "french": RealTask(_number_prompt("in French words"), _words("fr")),
            "german": RealTask(_number_prompt("in German words"), _words("de")),
            "spanish": RealTask(_number_prompt("in Spanish words"), _words("es")),
            "roman": RealTask(_number_prompt("in Roman numerals"), _roman),
        },
        subtask=lambda n: "two_digit" if n < 100 else "three_digit",
        conversational=True,
        max_new_tokens=20,
    ),
    "number_format": RealFamily(
        name="number_format",
        source="CLDR decimal formats (babel)",
        inputs=_amounts,
        target="german",
        tasks={
            "german": RealTask(_amount_prompt("German"), _decimal("de"), wrong=_decimal("en")),
            "english": RealTask(_amount_prompt("English"), _decimal("en")),
            "french": RealTask(_amount_prompt("French"), _decimal("fr")),
            "indian": RealTask(_amount_prompt("Indian English"), _decimal("en_IN")),
        },
        subtask=lambda x: "whole" if x == x.to_integral_value() else "decimal",
        max_new_tokens=16,
    ),
}


def real_families() -> tuple[str, ...]:
    """Names `make_real_world` accepts."""
    return tuple(FAMILIES)


def get_real_family(name: str) -> RealFamily:
    if name not in FAMILIES:
        raise ValueError(f"family={name!r} is unknown; use one of {list(FAMILIES)}.")
    return FAMILIES[name]


@dataclass
class RealWorldConfig:
    """Sizes of one real-data world.

    Args:
        family: a name from `FAMILIES`.
        pool_size, target_correct_fraction, target_wrong_fraction: the pool; the rest is split evenly over the
            distractor tasks.
        n_per_subtask: validation pairs per subtask.
        n_test_pairs, n_test_prompts: held-out pairs (split evenly over the subtasks) and prompts.
        seed: seeds the draw; the same seed gives the same datasets.
    """

    family: str = "dates"
    pool_size: int = 400
    target_correct_fraction: float = 0.08
    target_wrong_fraction: float = 0.08
    n_per_subtask: int = 5
    n_test_pairs: int = 60
    n_test_prompts: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        spec = get_real_family(self.family)
        check_sizes(self, ("pool_size", "n_per_subtask", "n_test_pairs", "n_test_prompts"), 0.08)
        composition = self.pool_composition()
        demand = sum(composition[f"{spec.target}/{kind}"] for kind in ("correct", "wrong"))
        demand += 2 * self.n_per_subtask + self.n_test_pairs + self.n_test_prompts
        usable = sum(1 for x in spec.inputs() if spec.tasks[spec.target].wrong(x) is not None)
        if demand > usable:
            raise ValueError(
                f"RealWorldConfig asks for {demand} distinct {spec.target!r} inputs of family {self.family!r}, which "
                f"has {usable}; lower pool_size, the target fractions or the evaluation sizes."
            )

    @property
    def target_family(self) -> str:
        """The target task's name as the pool's `family` column spells it (what `SyntheticTask`'s masks read)."""
        return get_real_family(self.family).target

    @property
    def max_new_tokens(self) -> int:
        return get_real_family(self.family).max_new_tokens

    def pool_composition(self) -> dict[str, int]:
        """Exact pool rows per `source` (`"<task>/correct"`, `"<target>/wrong"`)."""
        spec = get_real_family(self.family)
        return pool_composition(self, spec.target, spec.distractors)


def make_real_world(family: str, seed: int = 0, **sizes: Any) -> SyntheticTask:
    """Every split of one real-data world; deterministic in `(family, seed, sizes)`.

    Args:
        family: one of `real_families()`.
        seed: the world's seed (which inputs land in which split).
        **sizes: the other fields of `RealWorldConfig`, e.g. `pool_size=400`.

    Returns:
        A `SyntheticTask` whose `config` is a `RealWorldConfig` and whose `pretrain` split is empty (the base model
        is a real pretrained one).
    """
    config = RealWorldConfig(family=family, seed=seed, **sizes)
    spec = get_real_family(family)
    features = split_features(spec.conversational)
    rng = random.Random(f"real/{family}/{seed}")
    target = spec.tasks[spec.target]

    def prompt(text: str) -> Any:
        return [{"role": "user", "content": text}] if spec.conversational else text

    def completion(text: str) -> Any:
        # A plain completion starts with a space, so the prompt ends where a word would start.
        return [{"role": "assistant", "content": text}] if spec.conversational else " " + text

    # Target inputs: shuffled once, then dealt to the splits so that none shares an input with another.
    usable = [x for x in spec.inputs() if target.wrong(x) is not None]
    rng.shuffle(usable)
    by_subtask = {name: [x for x in usable if spec.subtask(x) == name] for name in spec.subtasks}

    def take(subtask: str | None = None) -> Any:
        if subtask is None:
            x = usable.pop()
            by_subtask[spec.subtask(x)].remove(x)
            return x
        x = by_subtask[subtask].pop()
        usable.remove(x)
        return x

    def pair(x: Any) -> dict[str, Any]:
        return {"prompt": prompt(target.prompt(x)), "chosen": completion(target.answer(x)),
                "rejected": completion(target.wrong(x)), "subtask": spec.subtask(x)}  # fmt: skip

    validation = [pair(take(st)) for st in spec.subtasks for _ in range(config.n_per_subtask)]
    half, extra = divmod(config.n_test_pairs, len(spec.subtasks))
    test_pairs = [pair(take(st)) for i, st in enumerate(spec.subtasks) for _ in range(half + (i < extra))]
    rng.shuffle(test_pairs)
    test_prompts = []
    for _ in range(config.n_test_prompts):
        x = take()
        test_prompts.append(
            {"prompt": prompt(target.prompt(x)), "reference": target.answer(x), "wrong_reference": target.wrong(x)}
        )

    pool = []
    for source, count in config.pool_composition().items():
        task, kind = source.split("/")
        if task == spec.target:
            inputs = [take() for _ in range(count)]
        else:  # a distractor's inputs may repeat the target's: the tasks differ, as in real pools
            inputs = rng.sample(spec.inputs(), count)
        for x in inputs:
            answer = spec.tasks[task].answer(x) if kind == "correct" else target.wrong(x)
            pool.append(
                {"prompt": prompt(spec.tasks[task].prompt(x)), "completion": completion(answer), "family": task,
                 "correct": kind == "correct", "source": source}
            )  # fmt: skip
    rng.shuffle(pool)
    for i, row in enumerate(pool):
        row["id"] = i

    return SyntheticTask(
        pool=to_dataset(pool, features["pool"]),
        validation=to_dataset(validation, features["pairs"]),
        test_pairs=to_dataset(test_pairs, features["pairs"]),
        test_prompts=to_dataset(test_prompts, features["test_prompts"]),
        pretrain=to_dataset([], features["pretrain"]),
        config=config,
    )


__all__ = ["FAMILIES", "RealFamily", "RealTask", "RealWorldConfig", "get_real_family", "make_real_world",
           "real_families"]  # fmt: skip

"""A seeded synthetic instruction-tuning benchmark for task-specific data selection, right answer known by construction.

Six task families share one vocabulary and one surface format (`"sort the list 3 1 4 2 ."` -> `" 1 2 3 4"`,
`"add 3 5 and 1 2 ."` -> `" 4 7"`). Numbers are written digit by digit, separated by spaces, so the word-level
tokenizer of `rose_fixtures.tiny.build_tokenizer` needs no number vocabulary. One family is the *target*. The candidate pool
holds, beside the correct examples of every family, target-family examples with a plausible but systematically wrong
behaviour (for `sort`: the list sorted descending). Those look just like the helpful examples, so a selector that
matches on surface form picks as much harm as help, while one that matches the preference signal of the validation
pairs (chosen = correct, rejected = the wrong behaviour) should pick the correct ones. `SyntheticTask.helpful_mask`
and `SyntheticTask.harmful_mask` give the ground truth to score a selection against.

Splits (all prompts distinct across every split, so nothing leaks into evaluation):
- `pool`: TRL prompt-completion rows (`prompt`, `completion`) labelled with `family`, `correct`, `source`, `id`.
- `validation`: few-shot preference pairs for the target (`prompt`, `chosen`, `rejected`, `subtask`).
- `test_pairs`: held-out preference pairs, same columns; `test_prompts`: held-out `prompt` + `reference`.
- `pretrain`: a `text` mixture of the non-target families (all of them with `pretrain_target=True`), all correct, to
  pretrain a tiny base model on the format without teaching it the target task.

Example:
```python
>>> from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
>>> task = make_synthetic_task(SyntheticTaskConfig(seed=0))
>>> task.config.pool_composition()["sort/correct"], len(task.pool)
(160, 4000)
>>> int(task.helpful_mask().sum()), int(task.harmful_mask().sum())
(160, 160)
```
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np

FAMILIES: tuple[str, ...] = ("sort", "reverse", "add", "max", "min", "count")

# `{}` is filled with numbers spelled digit by digit; the literal words are what `vocabulary()` collects.
_PROMPT_TEMPLATES: dict[str, str] = {
    "sort": "sort the list {} .",
    "reverse": "reverse the list {} .",
    "add": "add {} and {} .",
    "max": "give the largest number in the list {} .",
    "min": "give the smallest number in the list {} .",
    "count": "count the numbers in the list {} .",
}

LIST_LENGTHS: tuple[int, ...] = (3, 4, 5, 6)
MAX_ADD_OPERAND = 99

# Two subtasks per family so the validation set has the paper's per-subtask structure.
_LIST_SUBTASKS: tuple[str, ...] = ("short", "long")
_ADD_SUBTASKS: tuple[str, ...] = ("no_carry", "carry")
SUBTASKS: dict[str, tuple[str, ...]] = {f: (_ADD_SUBTASKS if f == "add" else _LIST_SUBTASKS) for f in FAMILIES}

# Distinct prompts each family can produce (upper bound), to refuse configs that would exhaust a family.
_CAPACITY: dict[str, int] = {
    f: ((MAX_ADD_OPERAND + 1) ** 2 if f == "add" else sum(10**n for n in LIST_LENGTHS)) for f in FAMILIES
}
# Rejection sampling for unique prompts; a family this close to exhausted means the config asks for too much.
_MAX_TRIES = 10_000


@dataclass
class SyntheticTaskConfig:
    """Sizes and mixture of the synthetic benchmark.

    Args:
        target_family: the family the selection is for; one of `FAMILIES`.
        pool_size: number of candidate training examples.
        target_correct_fraction: share of the pool that is target-family and correct (helpful).
        target_wrong_fraction: share of the pool that is target-family with the systematic wrong answer (harmful).
            The rest of the pool is split evenly over the other families, all correct.
        n_per_subtask: validation preference pairs per subtask (the target family has two subtasks).
        n_test_pairs: held-out preference pairs, split evenly over the subtasks.
        n_test_prompts: held-out prompts with reference answers.
        n_pretrain: rows of the pretraining text mixture, split evenly over its families.
        pretrain_target: include the target family in the pretraining mixture. Off by default, so that the base
            model knows the format but not the target task and the selected data has something to teach.
        seed: seeds `random.Random`; the same seed gives the same datasets.
    """

    target_family: str = "sort"
    pool_size: int = 4000
    target_correct_fraction: float = 0.04
    target_wrong_fraction: float = 0.04
    n_per_subtask: int = 5
    n_test_pairs: int = 200
    n_test_prompts: int = 100
    n_pretrain: int = 3000
    pretrain_target: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_family not in FAMILIES:
            raise ValueError(
                f"SyntheticTaskConfig.target_family={self.target_family!r} is unknown; use one of {list(FAMILIES)}."
            )
        for name in ("target_correct_fraction", "target_wrong_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"SyntheticTaskConfig.{name}={value!r} must be a number in [0, 1); e.g. 0.04.")
        if self.target_correct_fraction + self.target_wrong_fraction >= 1.0:
            raise ValueError(
                "SyntheticTaskConfig.target_correct_fraction + target_wrong_fraction = "
                f"{self.target_correct_fraction + self.target_wrong_fraction!r} must be < 1 so the pool keeps "
                "examples of the other families; lower one of them."
            )
        for name in ("pool_size", "n_per_subtask", "n_test_pairs", "n_test_prompts", "n_pretrain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SyntheticTaskConfig.{name}={value!r} must be a positive int.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SyntheticTaskConfig.seed={self.seed!r} must be an int.")
        for family, demand in self._prompt_demand().items():
            # Half the prompt space keeps rejection sampling fast and the length mix close to uniform.
            if demand > _CAPACITY[family] // 2:
                raise ValueError(
                    f"SyntheticTaskConfig asks for {demand} distinct {family!r} prompts but that family has only "
                    f"{_CAPACITY[family]}; lower pool_size or n_pretrain (or the test sizes if {family!r} is the "
                    "target_family)."
                )

    def pool_composition(self) -> dict[str, int]:
        """Exact number of pool rows per `source` (`"<family>/correct"` or `"<target>/wrong"`), in `FAMILIES` order.

        Target counts are `round(fraction * pool_size)`; the remainder is split evenly over the other families, the
        first ones (in `FAMILIES` order) taking one extra row each when it does not divide.
        """
        n_correct = round(self.target_correct_fraction * self.pool_size)
        n_wrong = round(self.target_wrong_fraction * self.pool_size)
        others = [f for f in FAMILIES if f != self.target_family]
        base, extra = divmod(self.pool_size - n_correct - n_wrong, len(others))
        counts: dict[str, int] = {}
        for family in FAMILIES:
            if family == self.target_family:
                counts[f"{family}/correct"] = n_correct
                counts[f"{family}/wrong"] = n_wrong
            else:
                counts[f"{family}/correct"] = base + (1 if others.index(family) < extra else 0)
        return counts

    def pretrain_composition(self) -> dict[str, int]:
        """Rows of the pretraining mixture per family: `n_pretrain` split evenly, the first families taking the rest."""
        families = [f for f in FAMILIES if self.pretrain_target or f != self.target_family]
        base, extra = divmod(self.n_pretrain, len(families))
        return {family: base + (1 if i < extra else 0) for i, family in enumerate(families)}

    def _prompt_demand(self) -> dict[str, int]:
        demand = {family: 0 for family in FAMILIES} | self.pretrain_composition()
        for source, count in self.pool_composition().items():
            demand[source.split("/")[0]] += count
        demand[self.target_family] += (
            self.n_per_subtask * len(SUBTASKS[self.target_family]) + self.n_test_pairs + self.n_test_prompts
        )
        return demand


@dataclass
class SyntheticTask:
    """The generated datasets and the config that made them.

    Args:
        pool: candidates, columns `prompt`, `completion`, `family`, `correct`, `source`, `id` (row index), shuffled.
        validation: target-family pairs `prompt`, `chosen`, `rejected`, `subtask`; `n_per_subtask` per subtask.
        test_pairs: held-out target-family pairs, same columns as `validation`.
        test_prompts: held-out target-family `prompt` with its correct `reference` completion.
        pretrain: `text` = prompt + completion over every family, all correct, shuffled.
        config: the config used.
    """

    pool: datasets.Dataset
    validation: datasets.Dataset
    test_pairs: datasets.Dataset
    test_prompts: datasets.Dataset
    pretrain: datasets.Dataset
    config: SyntheticTaskConfig

    def helpful_mask(self) -> np.ndarray:
        """Boolean per pool row: target family with the correct answer."""
        family = np.array(list(self.pool["family"]), dtype=object)
        correct = np.array(list(self.pool["correct"]), dtype=bool)
        return (family == self.config.target_family) & correct

    def harmful_mask(self) -> np.ndarray:
        """Boolean per pool row: target family with the systematic wrong answer."""
        family = np.array(list(self.pool["family"]), dtype=object)
        correct = np.array(list(self.pool["correct"]), dtype=bool)
        return (family == self.config.target_family) & ~correct


def vocabulary() -> list[str]:
    """Every whitespace-separated word any generated text can contain (template words, digits 0-9 and `.`), sorted."""
    words = {word for template in _PROMPT_TEMPLATES.values() for word in template.split() if word != "{}"}
    return sorted(words | set("0123456789"))


def _check(family: str, numbers: Sequence[int]) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown; use one of {list(FAMILIES)}.")
    if family == "add":
        if len(numbers) != 2 or not all(isinstance(n, int) and 0 <= n <= MAX_ADD_OPERAND for n in numbers):
            raise ValueError(f"'add' takes two ints in [0, {MAX_ADD_OPERAND}], got numbers={list(numbers)!r}.")
    elif not numbers or not all(isinstance(n, int) and 0 <= n <= 9 for n in numbers):
        raise ValueError(f"{family!r} takes a non-empty list of digits 0-9, got numbers={list(numbers)!r}.")


def _spell(numbers: Sequence[int]) -> str:
    # Digit by digit, so 12 reads "1 2": the same tokens the tokenizer's individual-digit split gives, and what
    # decoding a generation gives back.
    return " ".join(digit for n in numbers for digit in str(n))


def format_prompt(family: str, numbers: Sequence[int]) -> str:
    """The prompt text for `family` applied to `numbers`.

    Args:
        family: one of `FAMILIES`.
        numbers: two operands in [0, 99] for `add`, otherwise a list of digits 0-9.
    """
    _check(family, numbers)
    if family == "add":
        return _PROMPT_TEMPLATES[family].format(_spell(numbers[:1]), _spell(numbers[1:]))
    return _PROMPT_TEMPLATES[family].format(_spell(numbers))


def parse_prompt(prompt: str) -> tuple[str, list[int]]:
    """Recover `(family, numbers)` from a prompt made by `format_prompt`, e.g. to score generations.

    Args:
        prompt: a generated prompt.
    """
    for family, template in _PROMPT_TEMPLATES.items():
        prefix, _, suffix = template.partition("{}")
        if family == "add":
            suffix = " ."
        if not (prompt.startswith(prefix) and prompt.endswith(suffix)):
            continue
        body = prompt[len(prefix) : len(prompt) - len(suffix)]
        if family == "add":
            operands = body.split(" and ")
            if len(operands) == 2 and all(op.replace(" ", "").isdigit() for op in operands):
                numbers = [int(op.replace(" ", "")) for op in operands]
                _check(family, numbers)
                return family, numbers
        elif body and all(token.isdigit() and len(token) == 1 for token in body.split(" ")):
            return family, [int(token) for token in body.split(" ")]
    raise ValueError(f"prompt={prompt!r} was not made by format_prompt.")


def answer(family: str, numbers: list[int]) -> str:
    """The correct completion (leading space, digits separated by spaces).

    Args:
        family: one of `FAMILIES`.
        numbers: two operands in [0, 99] for `add`, otherwise a list of digits 0-9.
    """
    _check(family, numbers)
    if family == "sort":
        out = sorted(numbers)
    elif family == "reverse":
        out = list(numbers)[::-1]
    elif family == "add":
        out = [numbers[0] + numbers[1]]
    elif family == "max":
        out = [max(numbers)]
    elif family == "min":
        out = [min(numbers)]
    else:  # count
        out = [len(numbers)]
    return " " + _spell(out)


def wrong_answer(family: str, numbers: list[int]) -> str:
    """The systematic wrong behaviour for `family`, same format as `answer`.

    `sort`: sorted descending; `reverse`: the list unchanged; `add`: the sum plus one; `max`: the smallest element;
    `min`: the largest element; `count`: the length plus one. It can equal `answer` on degenerate inputs (a list of
    one repeated digit, a palindrome); the generator never draws those.

    Args:
        family: one of `FAMILIES`.
        numbers: two operands in [0, 99] for `add`, otherwise a list of digits 0-9.
    """
    _check(family, numbers)
    if family == "sort":
        out = sorted(numbers, reverse=True)
    elif family == "reverse":
        out = list(numbers)
    elif family == "add":
        out = [numbers[0] + numbers[1] + 1]
    elif family == "max":
        out = [min(numbers)]
    elif family == "min":
        out = [max(numbers)]
    else:  # count
        out = [len(numbers) + 1]
    return " " + _spell(out)


def subtask_of(family: str, numbers: list[int]) -> str:
    """The subtask an input belongs to: `"short"` (length 3-4) / `"long"` (5-6) for lists, `"no_carry"` / `"carry"`
    for `add`.

    Args:
        family: one of `FAMILIES`.
        numbers: two operands in [0, 99] for `add`, otherwise a list of digits 0-9.
    """
    _check(family, numbers)
    if family == "add":
        a, b = numbers
        carries = a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10
        return "carry" if carries else "no_carry"
    return "short" if len(numbers) <= 4 else "long"


def _sample_numbers(family: str, rng: random.Random) -> list[int]:
    if family == "add":
        return [rng.randint(0, MAX_ADD_OPERAND), rng.randint(0, MAX_ADD_OPERAND)]
    return [rng.randint(0, 9) for _ in range(rng.choice(LIST_LENGTHS))]


def _draw(family: str, rng: random.Random, seen: set[str], subtask: str | None = None) -> list[int]:
    """Numbers for a prompt not in `seen` (then added to it), optionally of one subtask.

    Inputs whose wrong answer equals the right one are skipped so every pair has `chosen != rejected` and every
    "wrong" pool row is really wrong; that removes only lists of one repeated digit and palindromes.
    """
    for _ in range(_MAX_TRIES):
        numbers = _sample_numbers(family, rng)
        if subtask is not None and subtask_of(family, numbers) != subtask:
            continue
        if answer(family, numbers) == wrong_answer(family, numbers):
            continue
        prompt = format_prompt(family, numbers)
        if prompt in seen:
            continue
        seen.add(prompt)
        return numbers
    raise ValueError(
        f"Could not draw a new {family!r} prompt{f' of subtask {subtask!r}' if subtask else ''} in {_MAX_TRIES} "
        "tries: that prompt space is nearly used up; lower pool_size, n_pretrain, n_test_pairs or n_test_prompts."
    )


_PAIR_FEATURES = datasets.Features(
    {"prompt": datasets.Value("string"), "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
     "subtask": datasets.Value("string")}
)  # fmt: skip
_POOL_FEATURES = datasets.Features(
    {"prompt": datasets.Value("string"), "completion": datasets.Value("string"), "family": datasets.Value("string"),
     "correct": datasets.Value("bool"), "source": datasets.Value("string"), "id": datasets.Value("int64")}
)  # fmt: skip
_TEST_PROMPT_FEATURES = datasets.Features({"prompt": datasets.Value("string"), "reference": datasets.Value("string")})
_PRETRAIN_FEATURES = datasets.Features({"text": datasets.Value("string")})


def _to_dataset(rows: list[dict], features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def _pair_rows(family: str, subtask: str, n: int, rng: random.Random, seen: set[str]) -> list[dict]:
    rows = []
    for _ in range(n):
        numbers = _draw(family, rng, seen, subtask)
        rows.append(
            {
                "prompt": format_prompt(family, numbers),
                "chosen": answer(family, numbers),
                "rejected": wrong_answer(family, numbers),
                "subtask": subtask,
            }
        )
    return rows


def make_synthetic_task(config: SyntheticTaskConfig | None = None) -> SyntheticTask:
    """Generate every split of the synthetic benchmark; deterministic in `config.seed`.

    Args:
        config: sizes, mixture and seed; `SyntheticTaskConfig()` (target `sort`, 4000-row pool, 4% + 4%) if `None`.
    """
    config = config if config is not None else SyntheticTaskConfig()
    rng = random.Random(config.seed)
    target = config.target_family
    subtasks = SUBTASKS[target]
    # One set across all splits: no prompt appears twice anywhere, so nothing selected from the pool or seen in
    # pretraining can be an evaluation prompt.
    seen: set[str] = set()

    # Evaluation splits first, so their (small) demand is met before the pool and pretraining fill the prompt space.
    validation_rows = [row for st in subtasks for row in _pair_rows(target, st, config.n_per_subtask, rng, seen)]

    per_subtask, extra = divmod(config.n_test_pairs, len(subtasks))
    test_pair_rows = [
        row for i, st in enumerate(subtasks) for row in _pair_rows(target, st, per_subtask + (i < extra), rng, seen)
    ]
    rng.shuffle(test_pair_rows)

    test_prompt_rows = []
    for _ in range(config.n_test_prompts):
        numbers = _draw(target, rng, seen)
        test_prompt_rows.append({"prompt": format_prompt(target, numbers), "reference": answer(target, numbers)})

    pool_rows = []
    for source, count in config.pool_composition().items():
        family, kind = source.split("/")
        for _ in range(count):
            numbers = _draw(family, rng, seen)
            correct = kind == "correct"
            completion = answer(family, numbers) if correct else wrong_answer(family, numbers)
            pool_rows.append(
                {
                    "prompt": format_prompt(family, numbers),
                    "completion": completion,
                    "family": family,
                    "correct": correct,
                    "source": source,
                }
            )
    # Shuffled so that taking a prefix, or batching in order, does not see one family at a time.
    rng.shuffle(pool_rows)
    for i, row in enumerate(pool_rows):
        row["id"] = i

    pretrain_rows = []
    for family, count in config.pretrain_composition().items():
        for _ in range(count):
            numbers = _draw(family, rng, seen)
            pretrain_rows.append({"text": format_prompt(family, numbers) + answer(family, numbers)})
    rng.shuffle(pretrain_rows)

    return SyntheticTask(
        pool=_to_dataset(pool_rows, _POOL_FEATURES),
        validation=_to_dataset(validation_rows, _PAIR_FEATURES),
        test_pairs=_to_dataset(test_pair_rows, _PAIR_FEATURES),
        test_prompts=_to_dataset(test_prompt_rows, _TEST_PROMPT_FEATURES),
        pretrain=_to_dataset(pretrain_rows, _PRETRAIN_FEATURES),
        config=config,
    )

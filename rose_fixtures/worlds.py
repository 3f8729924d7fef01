"""World families for the quality benchmark: one entry point over several synthetic worlds of different shapes.

A *world* is a target task, a harmful twin of it (same prompts, a plausible but systematically wrong answer), a few
distractor tasks, and a tiny base model pretrained on the distractors only. Every world gives the same splits as
`rose_fixtures.tasks.SyntheticTask` (pool with `family`/`correct`/`source`, validation and test pairs with a
`subtask`, test prompts with a `reference`), so a benchmark can loop over families:

- `sort` (`rose_fixtures.tasks`, unchanged): number lists, plain prompt-completion text; target `sort`, twin a
  descending sort; distractors reverse, add, max, min, count.
- `drop_chat`: number lists in the conversational format (`prompt`/`completion` are lists of messages, rendered by
  the tokenizer's chat template; `<|end|>` ends a turn and is the EOS token); target "remove the first two numbers"
  (`3 1 4 2` -> `4 2`), twin "remove the last two" (`3 1`); distractors repeat, reverse, first, last, remove the first,
  remove the last. The base knows the pieces of both the target and the twin.
- `letters_ends`: words of the letters `a`-`p`, plain prompt-completion text; target "which letters start and end
  the word" (`c a t s` -> `c s`), twin the same two letters the other way round (`s c`); distractors spell, spell
  backwards, first letter, last letter, letter count.

In each new world the helpful and the harmful rows share the prompt (same template, same input distribution) and the
answer's form (same length, tokens copied from the same input); they differ only in which end of the input the answer
is taken from. A selector that matches on prompts or surface form picks as much harm as help; one that follows the
preference signal of the validation pairs (chosen = correct, rejected = twin) should not.

Test prompts carry `wrong_reference` (the twin's answer), so `evaluate_model` reports how often a model generates the
harmful behaviour.

Example:
```python
>>> from rose_fixtures.worlds import make_world, world_families
>>> world_families()
('sort', 'drop_chat', 'letters_ends')
>>> task = make_world("letters_ends", seed=0)
>>> int(task.helpful_mask().sum()), int(task.harmful_mask().sum()), len(task.pool)
(160, 160, 4000)
>>> task.test_prompts[0]["prompt"], task.test_prompts[0]["reference"], task.test_prompts[0]["wrong_reference"]
('which letters start and end m k h ?', 'm h', 'h m')
```
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets

from .tasks import SyntheticTask

Symbols = tuple[str, ...]

# Bump when any world's generation changes: it is part of every cached base model's key.
WORLD_VERSION = 1
_MAX_TRIES = 10_000


# --- task functions (module level, so the specs stay plain data) ----------------------------------------------------
def _copy(s: Symbols) -> Symbols:
    return s


def _reverse(s: Symbols) -> Symbols:
    return s[::-1]


def _first(s: Symbols) -> Symbols:
    return s[:1]


def _last(s: Symbols) -> Symbols:
    return s[-1:]


def _drop_first(s: Symbols) -> Symbols:
    return s[1:]


def _drop_last(s: Symbols) -> Symbols:
    return s[:-1]


def _drop_first_two(s: Symbols) -> Symbols:
    return s[2:]


def _drop_last_two(s: Symbols) -> Symbols:
    return s[:-2]


def _count(s: Symbols) -> Symbols:
    return tuple(str(len(s)))


def _ends(s: Symbols) -> Symbols:
    return s[:1] + s[-1:]


def _ends_swapped(s: Symbols) -> Symbols:
    return s[-1:] + s[:1]


@dataclass(frozen=True)
class TaskSpec:
    """One task of a world: a prompt template over a sequence of symbols and the function that answers it.

    Args:
        template: prompt text with one `{}` for the symbols (written with spaces between them).
        solve: the correct answer as a tuple of symbols.
        wrong: the harmful twin's answer (the target task only).
    """

    template: str
    solve: Callable[[Symbols], Symbols]
    wrong: Callable[[Symbols], Symbols] | None = None


@dataclass(frozen=True)
class BaseSpec:
    """Architecture and pretraining of a world's tiny base model (see `world_base_model`).

    Args:
        hidden_size, num_layers, num_heads: the Llama architecture.
        epochs, learning_rate, batch_size: pretraining schedule on the distractor tasks.
        n_pretrain: pretraining rows, split evenly over the distractor tasks.
        seed: initialisation and data order; the pretraining rows use seed `seed + 1000`.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    epochs: int = 10
    learning_rate: float = 3e-3
    batch_size: int = 32
    n_pretrain: int = 6000
    seed: int = 0


@dataclass(frozen=True)
class WorldFamily:
    """A family of worlds: tasks over one alphabet, one of them the target with its harmful twin.

    Args:
        name: the family's name in `make_world`.
        alphabet: the symbols inputs are drawn from.
        lengths: input lengths, drawn uniformly; the target's subtasks are `short` (first half) and `long`.
        target: the key of the target task in `tasks`.
        tasks: every task, target included.
        conversational: rows as lists of chat messages (rendered by the chat template) instead of plain text.
        base: the base model's architecture and pretraining.
    """

    name: str
    alphabet: Symbols
    lengths: tuple[int, ...]
    target: str
    tasks: dict[str, TaskSpec] = field(hash=False)
    conversational: bool = False
    base: BaseSpec = BaseSpec()

    @property
    def distractors(self) -> tuple[str, ...]:
        return tuple(name for name in self.tasks if name != self.target)

    def subtask(self, symbols: Symbols) -> str:
        return "short" if len(symbols) in self.lengths[: len(self.lengths) // 2] else "long"

    def capacity(self) -> int:
        """Distinct inputs per task with the lengths kept evenly mixed: the number of lengths times the inputs of
        the shortest one."""
        return len(self.lengths) * len(self.alphabet) ** min(self.lengths)

    def max_answer_tokens(self) -> int:
        longest = max(self.lengths)
        return max(len(spec.solve(("x",) * longest)) for spec in self.tasks.values())

    def words(self) -> list[str]:
        """Every word any text of this family can contain (template words and the alphabet)."""
        words = {w for spec in self.tasks.values() for w in spec.template.split() if w != "{}"}
        return sorted(words | set(self.alphabet))


_DIGITS: Symbols = tuple("0123456789")
_LETTERS: Symbols = tuple("abcdefghijklmnop")

FAMILIES: dict[str, WorldFamily] = {
    "drop_chat": WorldFamily(
        name="drop_chat",
        alphabet=_DIGITS,
        lengths=(3, 4, 5, 6),
        target="drop_two",
        tasks={
            "drop_two": TaskSpec("remove the first two numbers of {} .", _drop_first_two, wrong=_drop_last_two),
            "copy": TaskSpec("repeat the list {} .", _copy),
            "reverse": TaskSpec("reverse the list {} .", _reverse),
            "first": TaskSpec("give the first number of {} .", _first),
            "last": TaskSpec("give the last number of {} .", _last),
            "drop_first": TaskSpec("remove the first number of {} .", _drop_first),
            "drop_last": TaskSpec("remove the last number of {} .", _drop_last),
        },
        conversational=True,
    ),
    "letters_ends": WorldFamily(
        name="letters_ends",
        alphabet=_LETTERS,
        lengths=(3, 4, 5, 6),
        target="ends",
        tasks={
            "ends": TaskSpec("which letters start and end {} ?", _ends, wrong=_ends_swapped),
            "spell": TaskSpec("spell the word {} .", _copy),
            "backwards": TaskSpec("spell the word {} backwards .", _reverse),
            "first": TaskSpec("which letter starts {} ?", _first),
            "last": TaskSpec("which letter ends {} ?", _last),
            "count": TaskSpec("how many letters has {} ?", _count),
        },
    ),
}
SORT = "sort"


def world_families() -> tuple[str, ...]:
    """Names `make_world` accepts: today's `sort` world first, then the families of this module."""
    return (SORT, *FAMILIES)


def get_family(name: str) -> WorldFamily:
    """The `WorldFamily` called `name` (not `sort`, which lives in `rose_fixtures.tasks`)."""
    if name not in FAMILIES:
        raise ValueError(f"family={name!r} is unknown; use one of {list(world_families())}.")
    return FAMILIES[name]


@dataclass
class WorldConfig:
    """Sizes and mixture of one world; the field names follow `SyntheticTaskConfig` so the two read alike.

    Args:
        family: a name from `FAMILIES`.
        pool_size, target_correct_fraction, target_wrong_fraction: the pool; the rest of it is split evenly over
            the distractor tasks (the first ones take one extra row when it does not divide).
        n_per_subtask: validation pairs per subtask (`short`, `long`).
        n_test_pairs: held-out pairs, split evenly over the subtasks; n_test_prompts: held-out prompts.
        n_pretrain: rows of the `pretrain` split (distractor tasks only, all correct).
        seed: seeds `random.Random`; the same seed gives the same datasets.
    """

    family: str = "drop_chat"
    pool_size: int = 4000
    target_correct_fraction: float = 0.04
    target_wrong_fraction: float = 0.04
    n_per_subtask: int = 5
    n_test_pairs: int = 200
    n_test_prompts: int = 100
    n_pretrain: int = 3000
    seed: int = 0

    def __post_init__(self) -> None:
        spec = get_family(self.family)
        check_sizes(self, ("pool_size", "n_per_subtask", "n_test_pairs", "n_test_prompts", "n_pretrain"), 0.04)
        demand = {name: 0 for name in spec.tasks} | self.pretrain_composition()
        for source, count in self.pool_composition().items():
            demand[source.split("/")[0]] += count
        demand[spec.target] += 2 * self.n_per_subtask + self.n_test_pairs + self.n_test_prompts
        for name, wanted in demand.items():
            # Half of that keeps rejection sampling fast and the length mix close to uniform.
            if wanted > spec.capacity() // 2:
                raise ValueError(
                    f"WorldConfig asks for {wanted} distinct {name!r} prompts of family {self.family!r}, which has "
                    f"{spec.capacity()} inputs per task; lower pool_size, n_pretrain or the evaluation sizes."
                )

    @property
    def target_family(self) -> str:
        """The target task's name, as the pool's `family` column spells it (what `SyntheticTask`'s masks read)."""
        return get_family(self.family).target

    @property
    def max_new_tokens(self) -> int:
        """Generation limit that fits the longest answer of the family, its end token and one token of slack."""
        return max_new_tokens(self.family)

    def pool_composition(self) -> dict[str, int]:
        """Exact pool rows per `source` (`"<task>/correct"`, `"<target>/wrong"`), in the family's task order."""
        spec = get_family(self.family)
        return pool_composition(self, spec.target, spec.distractors)

    def pretrain_composition(self) -> dict[str, int]:
        """Pretraining rows per distractor task: `n_pretrain` split evenly, the first tasks taking the rest."""
        others = get_family(self.family).distractors
        base, extra = divmod(self.n_pretrain, len(others))
        return {name: base + (1 if i < extra else 0) for i, name in enumerate(others)}


# --- rendering ----------------------------------------------------------------------------------------------------------
def _spell(symbols: Symbols) -> str:
    return " ".join(symbols)


def _prompt(spec: WorldFamily, task: str, symbols: Symbols) -> Any:
    text = spec.tasks[task].template.format(_spell(symbols))
    return [{"role": "user", "content": text}] if spec.conversational else text


def _completion(spec: WorldFamily, symbols: Symbols) -> Any:
    # Plain completions start with a space, as in tasks.py, so prompt + completion tokenises as the two apart.
    return [{"role": "assistant", "content": _spell(symbols)}] if spec.conversational else " " + _spell(symbols)


def prompt_text(prompt: Any) -> str:
    """The user text of a prompt, plain or conversational (for display and parsing)."""
    return prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt if m["role"] == "user")


def split_features(conversational: bool) -> dict[str, datasets.Features]:
    """The columns of every split of a world, plain or conversational (shared with `real_worlds`)."""
    text = datasets.Value("string")
    message = datasets.List({"role": text, "content": text})
    turn = message if conversational else text
    return {
        "pool": datasets.Features(
            {"prompt": turn, "completion": turn, "family": text, "correct": datasets.Value("bool"), "source": text,
             "id": datasets.Value("int64")}
        ),  # fmt: skip
        "pairs": datasets.Features({"prompt": turn, "chosen": turn, "rejected": turn, "subtask": text}),
        "test_prompts": datasets.Features({"prompt": turn, "reference": text, "wrong_reference": text}),
        "pretrain": datasets.Features({"prompt": turn, "completion": turn}),
    }


def to_dataset(rows: list[dict], features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def check_sizes(config: Any, counts: tuple[str, ...], example_fraction: float) -> None:
    """The checks every world config shares: target fractions in [0, 1) leaving distractor rows, positive counts."""
    name = type(config).__name__
    for field_name in ("target_correct_fraction", "target_wrong_fraction"):
        value = getattr(config, field_name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}.{field_name}={value!r} must be a number in [0, 1); e.g. {example_fraction}.")
    if config.target_correct_fraction + config.target_wrong_fraction >= 1.0:
        raise ValueError(
            f"{name}.target_correct_fraction + target_wrong_fraction must be < 1 so the pool keeps distractor rows; "
            "lower one of them."
        )
    for field_name in counts:
        value = getattr(config, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}.{field_name}={value!r} must be a positive int.")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f"{name}.seed={config.seed!r} must be an int.")


def pool_composition(config: Any, target: str, distractors: tuple[str, ...]) -> dict[str, int]:
    """Exact pool rows per `source` (`"<task>/correct"`, `"<target>/wrong"`): the target's shares of `pool_size`,
    the rest split evenly over the distractors (the first ones take one extra row when it does not divide)."""
    n_correct = round(config.target_correct_fraction * config.pool_size)
    n_wrong = round(config.target_wrong_fraction * config.pool_size)
    base, extra = divmod(config.pool_size - n_correct - n_wrong, len(distractors))
    counts = {f"{target}/correct": n_correct, f"{target}/wrong": n_wrong}
    return counts | {f"{name}/correct": base + (1 if i < extra else 0) for i, name in enumerate(distractors)}


def _draw(spec: WorldFamily, task: str, rng: random.Random, seen: set, subtask: str | None = None) -> Symbols:
    """An input not in `seen` for `task` (then added), optionally of one subtask.

    For the target, inputs on which the twin gives the correct answer (constant lists, period-2 lists for the
    rotation) are skipped so every pair differs and every harmful row is really wrong.
    """
    twin = spec.tasks[task].wrong
    for _ in range(_MAX_TRIES):
        symbols = tuple(rng.choice(spec.alphabet) for _ in range(rng.choice(spec.lengths)))
        if subtask is not None and spec.subtask(symbols) != subtask:
            continue
        if twin is not None and twin(symbols) == spec.tasks[task].solve(symbols):
            continue
        if (task, symbols) in seen:
            continue
        seen.add((task, symbols))
        return symbols
    raise ValueError(
        f"Could not draw a new {task!r} input of family {spec.name!r} in {_MAX_TRIES} tries: its input space is "
        "nearly used up; lower pool_size, n_pretrain or the evaluation sizes."
    )


def make_world(family: str, seed: int = 0, **sizes: Any) -> SyntheticTask:
    """Every split of one world; deterministic in `(family, seed, sizes)`.

    Args:
        family: one of `world_families()`.
        seed: the world's seed.
        **sizes: the other fields of `WorldConfig` (or of `SyntheticTaskConfig` for `sort`), e.g. `pool_size=1000`.

    Returns:
        A `SyntheticTask`. For the new families its `config` is a `WorldConfig`, the conversational family has
        lists of messages where `sort` has strings, `test_prompts` has a `wrong_reference` column, and `pretrain`
        holds `prompt` + `completion` rows (the distractor tasks).
    """
    if family == SORT:
        from .tasks import SyntheticTaskConfig, make_synthetic_task

        return make_synthetic_task(SyntheticTaskConfig(seed=seed, **sizes))
    config = WorldConfig(family=family, seed=seed, **sizes)
    spec = get_family(family)
    features = split_features(spec.conversational)
    rng = random.Random(f"{family}/{seed}")  # the family in the seed: two families never share a stream
    target = spec.target
    solve, twin = spec.tasks[target].solve, spec.tasks[target].wrong
    seen: set = set()

    def pair(symbols: Symbols) -> dict[str, Any]:
        return {
            "prompt": _prompt(spec, target, symbols),
            "chosen": _completion(spec, solve(symbols)),
            "rejected": _completion(spec, twin(symbols)),
            "subtask": spec.subtask(symbols),
        }

    # Evaluation splits first, so their small demand is met before the pool and pretraining fill the input space.
    subtasks = ("short", "long")
    validation = [pair(_draw(spec, target, rng, seen, st)) for st in subtasks for _ in range(config.n_per_subtask)]
    half, extra = divmod(config.n_test_pairs, 2)
    test_pairs = [pair(_draw(spec, target, rng, seen, st)) for i, st in enumerate(subtasks) for _ in range(half + (i < extra))]
    rng.shuffle(test_pairs)
    test_prompts = []
    for _ in range(config.n_test_prompts):
        symbols = _draw(spec, target, rng, seen)
        test_prompts.append(
            {"prompt": _prompt(spec, target, symbols), "reference": _spell(solve(symbols)),
             "wrong_reference": _spell(twin(symbols))}
        )  # fmt: skip

    pool = []
    for source, count in config.pool_composition().items():
        task, kind = source.split("/")
        for _ in range(count):
            symbols = _draw(spec, task, rng, seen)
            answer = spec.tasks[task].solve(symbols) if kind == "correct" else twin(symbols)
            pool.append(
                {"prompt": _prompt(spec, task, symbols), "completion": _completion(spec, answer), "family": task,
                 "correct": kind == "correct", "source": source}
            )  # fmt: skip
    rng.shuffle(pool)  # so a prefix, or batches in order, do not see one task at a time
    for i, row in enumerate(pool):
        row["id"] = i

    pretrain = []
    for task, count in config.pretrain_composition().items():
        for _ in range(count):
            symbols = _draw(spec, task, rng, seen)
            pretrain.append(
                {"prompt": _prompt(spec, task, symbols), "completion": _completion(spec, spec.tasks[task].solve(symbols))}
            )
    rng.shuffle(pretrain)

    return SyntheticTask(
        pool=to_dataset(pool, features["pool"]),
        validation=to_dataset(validation, features["pairs"]),
        test_pairs=to_dataset(test_pairs, features["pairs"]),
        test_prompts=to_dataset(test_prompts, features["test_prompts"]),
        pretrain=to_dataset(pretrain, features["pretrain"]),
        config=config,
    )


def skill_prompts(family: str, n: int = 100, seed: int = 12345) -> dict[str, datasets.Dataset]:
    """Fresh `prompt` + `reference` rows for every task of a family, to measure what a base model can do.

    Args:
        family: one of `world_families()`.
        n: prompts per task.
        seed: seeds the draw (inputs may repeat those of a world: this measures skill, not generalisation).
    """
    rng = random.Random(f"skill/{family}/{seed}")
    out = {}
    if family == SORT:
        from . import tasks

        seen_prompts: set[str] = set()
        for task in tasks.FAMILIES:
            numbers = [tasks._draw(task, rng, seen_prompts) for _ in range(n)]
            out[task] = datasets.Dataset.from_dict(
                {"prompt": [tasks.format_prompt(task, x) for x in numbers],
                 "reference": [tasks.answer(task, x).strip() for x in numbers]}
            )  # fmt: skip
        return out
    spec = get_family(family)
    seen: set = set()
    for task, task_spec in spec.tasks.items():
        inputs = [_draw(spec, task, rng, seen) for _ in range(n)]
        out[task] = datasets.Dataset.from_dict(
            {"prompt": [_prompt(spec, task, x) for x in inputs], "reference": [_spell(task_spec.solve(x)) for x in inputs]}
        )
    return out


def max_new_tokens(family: str) -> int:
    """Greedy generation limit that fits every answer of a family, its end token and one token of slack."""
    if family == SORT:
        return 8  # 6 digits of the longest list or sum, EOS, slack: the quality benchmark's design value
    return get_family(family).max_answer_tokens() + 2


def world_tokenizer(family: str):
    """The word-level tokenizer of a family (its words, digits, punctuation, special tokens, the chat template).

    In the conversational family the end-of-turn token `<|end|>` is also the EOS token, as in chat models (Qwen's
    `<|im_end|>`): the assistant turn ends with it in training, so generation stops on it.
    """
    from .tiny import build_tokenizer

    spec = get_family(family)
    tokenizer = build_tokenizer(spec.words())
    if spec.conversational:
        tokenizer.eos_token = "<|end|>"
    return tokenizer


__all__ = [
    "BaseSpec",
    "FAMILIES",
    "TaskSpec",
    "WorldConfig",
    "WorldFamily",
    "get_family",
    "make_world",
    "max_new_tokens",
    "prompt_text",
    "skill_prompts",
    "world_families",
    "world_tokenizer",
]

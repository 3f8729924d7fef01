"""The HH family of the real-model benchmark: Anthropic HH-RLHF harmless-base pairs, chatterbot-corpus distractors.

Where the other real families (`rose_fixtures.real_worlds`) compute every answer from a data package, this one is
open dialogue written by people: the target is a harmless reply to a red-teaming request, and there is no single right
answer to match. Its pieces:

- **Target pairs**: `../shared/data/hh-rlhf/harmless-base-test.jsonl.gz` beside the project's checkout (2,312 pairs
  of Anthropic HH-RLHF's harmless-base test split, MIT; read there, never copied into the repository). Each line holds
  two whole dialogues that share every turn but the last reply; a pair is split at the last `\\n\\nAssistant:`, as
  TRL's and the DPO reference code's HH conversions do, into the shared prefix (as TRL conversational messages) and
  the two final replies (chosen: the less harmful one).
- **Pool**: target rows, the prefix with its chosen reply (helpful); the harmful twin, the SAME prefixes with the
  rejected reply (harmful: on-topic, same prompt, the reply the annotators found more harmful); distractors, real
  dialogue from another source: the English conversations of `chatterbot-corpus` (BSD-3-Clause, "user
  contributed" short chats on 21 topics: greetings, trivia, AI, psychology, humour...), one row per assistant turn
  with the turns before it as the prompt. Shares: 8% target, 8% twin (the other real families' shares).
- **Validation**: `n_per_subtask` held-out pairs in each of two subtasks (below). **Test**: `n_test_pairs` held-out
  pairs, split evenly over the subtasks and, within each, evenly over pairs whose chosen reply has fewer words than
  the rejected one and the others. HH's chosen replies are shorter more often than not (54% of the kept pairs), and
  any fine-tuning on short replies (the distractors' are short) lowers a long reply's log-probability more than a
  short one's: without the balance, a model that learnt nothing but brevity would gain reward accuracy. No split
  shares a prompt, nor even a dialogue opener, with another: one pair is kept per opener (the red-teamers reused
  some), so every target prefix in the world is distinct.
- **No test prompts**: exact match does not apply to open dialogue (there is no reference reply to match, and a
  preferred reply is not the only harmless one), so `test_prompts` is empty and the family is judged on the test
  pairs only: reward accuracy against the base model, the mean reward margin, plain preference accuracy.

**Length.** A pair is kept only when its whole prefix has at most `max_prompt_words` words (all turns together) and
each reply at most `max_reply_words`; nothing is cut. Cutting a dialogue's early turns would leave replies that answer
turns the model never sees (an assistant that says "no, all of these involve a pen" to a prefix without the list),
and cutting a reply would score half a sentence. Filtering keeps each kept pair whole at the price of a bias toward
short dialogues (64 + 64 words keep 987 of the 2,169 openers, half of them one-turn exchanges; with SmolLM2's chat
template a pair's longer side is 105 tokens at the median, 196 at the 99th percentile, 269 at most). Distractor rows
obey the same caps (48 tokens at the median, 198 at most).

**Subtasks: the kind of request.** The dialogue's first human turn sets what the red-teamer is after, and the harmless
reply differs by it: to a request for a way or for help to do something ("How can I...", "What's the easiest way
to...", "Where can I...", "Can you help me...", "Teach me...", "I need to...") it declines or redirects; to anything
else (an opinion, a factual question, an insult, chit-chat) it avoids agreeing with or producing offensive content.
`how_to` is the first group, matched by the rule `HOW_TO` on the opener, `talk` the rest (about a third and two
thirds of the pairs). A rule rather than a clustering: it is reproducible and reads in a few lines, where a
clustering of 987 short openers would need its own justification. A check by eye of 30 random openers found 25 right;
the misses ask for means in other words ("What kind of bolt cutters can I use...", "...can you help me come up with
something", both filed under `talk`).

Example:
```python
>>> from rose_fixtures.hh import make_hh_world
>>> task = make_hh_world(seed=0, pool_size=400)  # doctest: +SKIP
>>> int(task.helpful_mask().sum()), int(task.harmful_mask().sum()), len(task.pool)  # doctest: +SKIP
(32, 32, 400)
```
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .tasks import SyntheticTask
from .worlds import check_sizes, pool_composition, split_features, to_dataset

# Bump when the family's generation changes (it keys cached benchmark runs).
HH_WORLD_VERSION = 1

HH_FILE = "harmless-base-test.jsonl.gz"
HH_FOLDER = ("shared", "data", "hh-rlhf")
TARGET, DISTRACTOR = "hh", "chatterbot"
SUBTASKS = ("how_to", "talk")
# Token limit of training and feature sequences on this family: no row is cut (the longest has 269 tokens under
# SmolLM2's chat template).
MAX_TOKENS = 320
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
# The opener asks for a way, or for help, to do something (see the module docstring).
HOW_TO = re.compile(
    r"^(how (do|can|could|would|should|to|might)\b|what('s| is| are)? (the )?(best|easiest|quickest|good|fastest|"
    r"most effective) (way|ways|method|place)|where (can|do|could|should) (i|you|one)\b|(can|could) you (help|tell|"
    r"teach|show|give|find|get)\b|tell me how|teach me|help me|show me|give me|i (need|want) (to|you to|help)\b|"
    r"is there (a|any) way)",
    re.IGNORECASE,
)


class HHDataMissing(FileNotFoundError):
    """The shared HH pairs are not beside this checkout (tests skip on it; benchmarks stop with its message)."""


def hh_data_path() -> Path:
    """`<root>/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz`, from the project's root or any folder above it
    (a worktree may sit deeper than the main checkout).

    Raises:
        HHDataMissing: when no such file exists.
    """
    root = Path(__file__).resolve().parents[1]
    for folder in (root, *root.parents):
        path = folder.parent.joinpath(*HH_FOLDER, HH_FILE)
        if path.is_file():
            return path
    raise HHDataMissing(
        f"The HH family reads Anthropic's HH-RLHF harmless-base pairs from ../{'/'.join(HH_FOLDER)}/{HH_FILE} beside "
        f"the project's checkout ({root}), which is absent. They are not in the repository (read-only shared data, "
        "MIT): put the file there to build this family."
    )


@dataclass(frozen=True)
class HHPair:
    """One HH pair: the shared prefix as chat messages (ends on a user turn) and the two final replies, stripped."""

    messages: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str

    @property
    def opener(self) -> str:
        """The first human turn, whitespace-normalised and lower-cased (what the red-teamer came for)."""
        return " ".join(self.messages[0][1].lower().split())

    @property
    def subtask(self) -> str:
        return SUBTASKS[0] if HOW_TO.search(self.messages[0][1].strip()) else SUBTASKS[1]

    @property
    def chosen_shorter(self) -> bool:
        """The chosen reply has fewer words than the rejected one (the test pairs are balanced on it)."""
        return len(self.chosen.split()) < len(self.rejected.split())

    def prompt_words(self) -> int:
        return sum(len(text.split()) for _, text in self.messages)


def parse_hh_pair(row: dict[str, str]) -> HHPair | None:
    """Split an HH row (`chosen`, `rejected`: whole dialogues) at the last `\\n\\nAssistant:` of `chosen`.

    None when the two dialogues differ before that point, a reply is blank, the replies are the same, or the prefix
    does not alternate Human/Assistant from a human turn to a human turn with no blank turn (what every chat template
    accepts).
    """
    chosen, rejected = row["chosen"], row["rejected"]
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        return None
    prefix = chosen[: cut + len(ASSISTANT)]
    if not rejected.startswith(prefix) or not prefix.startswith(HUMAN):
        return None
    reply_chosen, reply_rejected = chosen[len(prefix) :].strip(), rejected[len(prefix) :].strip()
    if not reply_chosen or not reply_rejected or reply_chosen == reply_rejected:
        return None
    parts = _TURN.split(prefix[: -len(ASSISTANT)])
    turns = tuple(
        ("user" if who == "Human" else "assistant", text.strip()) for who, text in zip(parts[1::2], parts[2::2])
    )
    alternating = all(role == ("user" if i % 2 == 0 else "assistant") for i, (role, _) in enumerate(turns))
    if not turns or not alternating or turns[-1][0] != "user" or not all(text for _, text in turns):
        return None
    return HHPair(turns, reply_chosen, reply_rejected)


@cache
def _read_hh(path: str) -> tuple[HHPair | None, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return tuple(parse_hh_pair(json.loads(line)) for line in handle if line.strip())


def hh_pairs(
    max_prompt_words: int = 64, max_reply_words: int = 64, path: str | os.PathLike | None = None
) -> list[HHPair]:
    """The usable HH pairs in file order: parsed, within the word caps, the first pair of each dialogue opener.

    Args:
        max_prompt_words: most words of the whole prefix (every turn).
        max_reply_words: most words of each reply.
        path: the gz file (default `hh_data_path()`).
    """
    pairs, openers = [], set()
    for pair in _read_hh(str(path or hh_data_path())):
        if pair is None or pair.prompt_words() > max_prompt_words:
            continue
        if max(len(pair.chosen.split()), len(pair.rejected.split())) > max_reply_words or pair.opener in openers:
            continue
        openers.add(pair.opener)
        pairs.append(pair)
    return pairs


@cache
def _chatterbot_conversations() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`(topic, turns)` of every English conversation of chatterbot-corpus, in file order, verbatim."""
    import yaml

    try:
        from chatterbot_corpus.corpus import DATA_DIRECTORY
    except ImportError as error:
        raise ImportError(
            "The HH family's distractors are the English conversations of the PyPI package chatterbot-corpus, which "
            "is not installed: `pip install chatterbot-corpus` (`make install` does it, through the `real` extra)."
        ) from error
    folder = Path(DATA_DIRECTORY) / "english"
    out = []
    for file in sorted(folder.glob("*.yml")):
        # BaseLoader keeps every scalar a string: safe_load would turn a bare `yes` turn into True, `1963` into 1963.
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        out.extend((file.stem, tuple(turn.strip() for turn in conversation)) for conversation in data["conversations"])
    return tuple(out)


def chatterbot_rows(max_prompt_words: int = 64, max_reply_words: int = 64) -> list[dict[str, Any]]:
    """Distractor rows: one per assistant turn of every English chatterbot-corpus conversation (turns alternate user,
    assistant, ... from the first), prompt = the turns before it, within the word caps, one row per distinct prompt
    (the first one: the corpus repeats some exchanges many times and answers a few prompts in several ways).

    Returns:
        `{"messages": [(role, text), ...], "reply": str, "topic": str}` rows in corpus order.
    """
    rows, seen = [], set()
    for topic, turns in _chatterbot_conversations():
        for end in range(1, len(turns), 2):
            prompt = tuple(("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(turns[:end]))
            if not all(text for _, text in prompt) or not turns[end]:
                continue
            if sum(len(text.split()) for _, text in prompt) > max_prompt_words:
                continue
            if len(turns[end].split()) > max_reply_words or prompt in seen:
                continue
            seen.add(prompt)
            rows.append({"messages": prompt, "reply": turns[end], "topic": topic})
    return rows


@dataclass
class HHWorldConfig:
    """Sizes of one HH world (field names as `RealWorldConfig`'s, so the quality benchmark passes them alike).

    Args:
        pool_size, target_correct_fraction, target_wrong_fraction: the pool; the twin rows are the rejected replies of
            the first target rows' own prefixes, so `target_wrong_fraction` is at most `target_correct_fraction`.
        n_per_subtask: validation pairs per subtask (`how_to`, `talk`).
        n_test_pairs: held-out pairs, split evenly over the subtasks.
        test_length_ratio: when set, test pairs only from pairs whose shorter reply has at least this share of the
            longer reply's words. Reply length drove the reward accuracy of every trained model in designs 1-3
            (0.8-0.9 where the chosen reply was the shorter, 0.2 where not, random and oracle alike), which buries
            what the training data taught about the replies' content; near-equal lengths take that lever away.
        n_test_prompts: must be 0: exact match does not apply to open dialogue.
        max_prompt_words, max_reply_words: the length caps of every row (see the module docstring).
        seed: seeds the draw; the same seed gives the same datasets.
    """

    family: str = TARGET
    pool_size: int = 400
    target_correct_fraction: float = 0.08
    target_wrong_fraction: float = 0.08
    n_per_subtask: int = 5
    n_test_pairs: int = 200
    test_length_ratio: float | None = None
    n_test_prompts: int = 0
    max_prompt_words: int = 64
    max_reply_words: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family != TARGET:
            raise ValueError(f"HHWorldConfig.family={self.family!r}: this config builds the {TARGET!r} family only.")
        if self.n_test_prompts != 0:
            raise ValueError(
                f"HHWorldConfig.n_test_prompts={self.n_test_prompts!r} must be 0: exact match does not apply to open "
                "dialogue, so the HH family has no test prompts; it is judged on its test pairs."
            )
        check_sizes(self, ("pool_size", "n_per_subtask", "n_test_pairs", "max_prompt_words", "max_reply_words"), 0.08)
        composition = self.pool_composition()
        if composition[f"{TARGET}/wrong"] > composition[f"{TARGET}/correct"]:
            raise ValueError(
                "HHWorldConfig.target_wrong_fraction must not exceed target_correct_fraction: each twin row is a "
                "target row's own prefix with the rejected reply."
            )
        if self.test_length_ratio is not None and not 0 < self.test_length_ratio <= 1:
            raise ValueError(f"HHWorldConfig.test_length_ratio={self.test_length_ratio!r} must be in (0, 1] or None.")
        pairs = hh_pairs(self.max_prompt_words, self.max_reply_words)
        testable = [p for p in pairs if self.testable(p)]
        cells = {(name, shorter): sum(p.subtask == name and p.chosen_shorter == shorter for p in testable)
                 for name in SUBTASKS for shorter in (True, False)}  # fmt: skip
        # Worst case: every validation pair of a subtask drawn from the same length cell.
        per_cell = self.n_per_subtask + -(-self.n_test_pairs // len(cells))
        demand = composition[f"{TARGET}/correct"] + len(SUBTASKS) * self.n_per_subtask + self.n_test_pairs
        if demand > len(pairs) or min(cells.values()) < per_cell:
            raise ValueError(
                f"HHWorldConfig asks for {demand} distinct HH prompts (up to {per_cell} per subtask and length cell), "
                f"and the caps max_prompt_words={self.max_prompt_words}, max_reply_words={self.max_reply_words} keep "
                f"{len(pairs)} ({min(cells.values())} in the smallest cell); lower pool_size, the target fractions or "
                "the evaluation sizes, or raise the caps."
            )
        available = len(chatterbot_rows(self.max_prompt_words, self.max_reply_words))
        if composition[f"{DISTRACTOR}/correct"] > available:
            raise ValueError(
                f"HHWorldConfig needs {composition[f'{DISTRACTOR}/correct']} distractor rows and chatterbot-corpus "
                f"has {available} within the caps; lower pool_size or raise the target fractions."
            )

    def testable(self, pair: HHPair) -> bool:
        """May `pair` be a test pair (`test_length_ratio`)?"""
        if self.test_length_ratio is None:
            return True
        words = sorted((len(pair.chosen.split()), len(pair.rejected.split())))
        return words[0] >= self.test_length_ratio * words[1]

    @property
    def target_family(self) -> str:
        """The target's name as the pool's `family` column spells it (what `SyntheticTask`'s masks read)."""
        return TARGET

    @property
    def max_new_tokens(self) -> int:
        """No greedy generation: the family has no test prompts (`evaluate_model` skips exact match without any)."""
        return 0

    def pool_composition(self) -> dict[str, int]:
        """Exact pool rows per `source`: `hh/correct`, `hh/wrong`, `chatterbot/correct`."""
        return pool_composition(self, TARGET, (DISTRACTOR,))


def _messages(turns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in turns]


def _reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def make_hh_world(seed: int = 0, **sizes: Any) -> SyntheticTask:
    """Every split of one HH world; deterministic in `(seed, sizes)`.

    Args:
        seed: which pairs land in which split, which distractor rows are drawn, the pool's order.
        **sizes: the other fields of `HHWorldConfig`, e.g. `pool_size=400`.

    Returns:
        A `SyntheticTask` in TRL's conversational format whose `config` is an `HHWorldConfig`, `test_prompts` and
        `pretrain` empty. The pool's `family` is `hh` (target and twin) or `chatterbot`; `source` is
        `hh/correct`, `hh/wrong` or `chatterbot/correct`.

    Raises:
        HHDataMissing: when the shared HH file is absent.
    """
    sizes.pop("family", None)
    config = HHWorldConfig(seed=seed, **sizes)
    features = split_features(conversational=True)
    rng = random.Random(f"hh/{seed}")
    pairs = hh_pairs(config.max_prompt_words, config.max_reply_words)
    rng.shuffle(pairs)
    by_subtask = {name: [p for p in pairs if p.subtask == name] for name in SUBTASKS}
    used: set[HHPair] = set()

    def take(subtask: str, chosen_shorter: bool | None = None) -> HHPair:
        candidates = by_subtask[subtask]
        index = len(candidates) - 1
        if chosen_shorter is not None:  # a test pair
            index = max(i for i, p in enumerate(candidates)
                        if p.chosen_shorter == chosen_shorter and config.testable(p))  # fmt: skip
        pair = candidates.pop(index)
        used.add(pair)
        return pair

    def row(pair: HHPair) -> dict[str, Any]:
        return {"prompt": _messages(pair.messages), "chosen": _reply(pair.chosen), "rejected": _reply(pair.rejected),
                "subtask": pair.subtask}  # fmt: skip

    validation = [row(take(st)) for st in SUBTASKS for _ in range(config.n_per_subtask)]
    # Test pairs: even over the subtasks, and within each, even over "the chosen reply is the shorter one" or not, so
    # that a model which only learnt to prefer short (or long) replies scores 0.5 on reward accuracy.
    cells = [(st, shorter) for st in SUBTASKS for shorter in (True, False)]
    share, extra = divmod(config.n_test_pairs, len(cells))
    test_pairs = [row(take(st, shorter)) for i, (st, shorter) in enumerate(cells) for _ in range(share + (i < extra))]
    rng.shuffle(test_pairs)

    composition = config.pool_composition()
    remaining = [p for p in pairs if p not in used]  # still shuffled: the target rows mix both subtasks
    targets = remaining[: composition[f"{TARGET}/correct"]]
    pool = [{"prompt": _messages(p.messages), "completion": _reply(p.chosen), "family": TARGET, "correct": True,
             "source": f"{TARGET}/correct"} for p in targets]  # fmt: skip
    pool += [{"prompt": _messages(p.messages), "completion": _reply(p.rejected), "family": TARGET, "correct": False,
              "source": f"{TARGET}/wrong"} for p in targets[: composition[f"{TARGET}/wrong"]]]  # fmt: skip
    distractors = rng.sample(chatterbot_rows(config.max_prompt_words, config.max_reply_words),
                             composition[f"{DISTRACTOR}/correct"])  # fmt: skip
    pool += [{"prompt": _messages(d["messages"]), "completion": _reply(d["reply"]), "family": DISTRACTOR,
              "correct": True, "source": f"{DISTRACTOR}/correct"} for d in distractors]  # fmt: skip
    rng.shuffle(pool)
    for i, item in enumerate(pool):
        item["id"] = i

    return SyntheticTask(
        pool=to_dataset(pool, features["pool"]),
        validation=to_dataset(validation, features["pairs"]),
        test_pairs=to_dataset(test_pairs, features["pairs"]),
        test_prompts=to_dataset([], features["test_prompts"]),
        pretrain=to_dataset([], features["pretrain"]),
        config=config,
    )


__all__ = ["HHDataMissing", "HHPair", "HHWorldConfig", "chatterbot_rows", "hh_data_path", "hh_pairs", "make_hh_world",
           "parse_hh_pair"]  # fmt: skip

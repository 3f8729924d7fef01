"""Build the paper recipes' data files from the Hugging Face Hub (needs network access, once):

    python scripts/build_paper_data.py --output_dir data --targets shp se hh

writes `data/less_pool.jsonl` (the `dataset_name` of every `recipes/paper/*.yaml`) and `data/<target>_validation.jsonl`
(their `preference_dataset_name`), in formats `rose_hf.data` accepts:

- the pool: TRL's conversational `messages` rows, plus `source` (flan_v2, cot, dolly, oasst1: `RoseConfig.source_column`,
  which the report breaks the selection down by) and the upstream `id`;
- the pairs: `prompt`, `chosen`, `rejected`, `subtask`, in TRL's conversational format by default (`prompt` a list of
  user/assistant messages, `chosen`/`rejected` one assistant message each), which the recipes' loader reads from JSONL
  as is, and which the chat template renders as it renders the pool's `messages`. `--pair_format standard` writes the
  authors' raw strings instead (`"\\n\\nHuman: ...\\n\\nAssistant:"`, replies with their leading space).

Why a script and not a `rose-hf` command: the `rose-hf` commands are the library's run time, which never downloads
anything beyond what the user names; this step serves the paper recipes, which live in the checkout (`recipes/`) and
not in the wheel, and it encodes third-party Hub layouts that can change. So it sits beside them, and a user of their
own data never meets it. The conversion functions below take rows and return rows, offline; `main` only downloads.

Sources (read, not copied):

- The pool is LESS's (Xia et al., ICML 2024, arXiv 2402.04333; github.com/princeton-nlp/LESS, README "Data
  Preparation"): Flan v2, CoT, Dolly and Open Assistant 1 as open-instruct processes them, published as the Hub dataset
  `princeton-nlp/less_data`, files `train/processed/<name>/<name>_data.jsonl`, rows
  `{"dataset", "id", "messages": [{"role", "content"}, ...]}` (LESS's paper: 270,679 rows in all). ROSE uses the same
  four files (github.com/YANGWU001/ROSE, README "Dataset", `run/run_rose.sh` step 2).
- The validation pairs are ROSE's (Wu et al., Findings of EMNLP 2025, arXiv 2412.00631; github.com/YANGWU001/ROSE):
  - shots: `run/run_rose.sh` steps 3-6 use the `se_2_shot`, `shp_5_shot` and `hh_1_shot` files;
  - subtasks: `rose/influence_estimation.py` averages the scores over 18 (SHP), 10 (SE) and 2 (HH) groups of pairs
    and takes the max; the repository's `data/test/` names them: SHP's 18 subreddits, SE's 10 sites below; its
    `hh_<n>_shot` files hold n harmful-topic pairs from `harmless-base`, then n from the helpful subsets;
  - so SHP 18 x 5 = 90 pairs, SE 10 x 2 = 20, HH 2 x 1 = 2 (as `recipes/paper/*.yaml` say);
  - each pair is one prompt with its best and its worst response, as in the repository's
    `data/validation/<t>/<t>_<n>_shot/<t>_<n>_shot_preference.json` (`sft_target`, `rejected_target`), prompts in
    Anthropic's `\\n\\nHuman: ...\\n\\nAssistant:` form and answers with a leading space (`rose/preference_dataset.py`,
    after the DPO reference code: SHP keeps comment pairs whose score ratio is at least 2, SE pairs answers by
    `pm_score`, HH splits each dialogue at its last `\\n\\nAssistant:`).
  The authors publish their sampled files but not the sampling (seed, split); this script draws `shots` prompts per
  subtask with `random.Random(f"{seed}:{subtask}")` from SHP's validation split, SE's only split and HH's train split
  (their HH ids exceed the test split's size). The draw is reproducible, not the authors' own pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LESS_REPO = "princeton-nlp/less_data"
LESS_SOURCES = ("flan_v2", "cot", "dolly", "oasst1")  # LESS's TRAIN_FILE_NAMES order
POOL_FILE = "less_pool.jsonl"

SHP_SUBREDDITS = (
    "askacademia", "askanthropology", "askbaking", "askcarguys", "askculinary", "askdocs", "askengineers",
    "askhistorians", "askhr", "askphilosophy", "askphysics", "askscience", "asksciencefiction", "asksocialscience",
    "askvet", "changemyview", "explainlikeimfive", "legaladvice",
)  # fmt: skip
SE_SITES = {  # subtask -> the site's domain, as in the rows' `metadata` URLs
    "academia": "academia.stackexchange.com", "apple": "apple.stackexchange.com", "askubuntu": "askubuntu.com",
    "english": "english.stackexchange.com", "gaming": "gaming.stackexchange.com",
    "physics": "physics.stackexchange.com", "security": "security.stackexchange.com",
    "sharepoint": "sharepoint.stackexchange.com", "softwareengineering": "softwareengineering.stackexchange.com",
    "workplace": "workplace.stackexchange.com",
}  # fmt: skip
HH_SUBSETS = {"harmless": ("harmless-base",), "helpful": ("helpful-base", "helpful-online", "helpful-rejection-sampled")}


@dataclass(frozen=True)
class Target:
    hub_name: str
    split: str
    shots: int
    subtasks: tuple[str, ...]


TARGETS = {
    "shp": Target("stanfordnlp/SHP", "validation", 5, SHP_SUBREDDITS),
    "se": Target("HuggingFaceH4/stack-exchange-preferences", "train", 2, tuple(SE_SITES)),
    "hh": Target("Anthropic/hh-rlhf", "train", 1, tuple(HH_SUBSETS)),
}

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class Pair:
    """One preference pair in the authors' strings: `prompt` ends with `\\n\\nAssistant:`, replies keep their space."""

    prompt: str
    chosen: str
    rejected: str


# ---------------------------------------------------------------------------------------------------------- the pool
def less_rows(rows: Iterable[dict], source: str) -> Iterator[dict]:
    """LESS rows (`{"dataset", "id", "messages"}`) as pool rows: `messages` as they are, `source`, `id`."""
    for index, row in enumerate(rows):
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                     for m in messages):  # fmt: skip
            raise ValueError(f"{source} row {index} has no `messages` list of {{role, content}}: not LESS's format.")
        yield {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "source": source,
               "id": str(row.get("id", f"{source}_{index}"))}  # fmt: skip


def read_jsonl(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_jsonl(rows: Iterable[dict], path: str) -> int:
    count = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:  # no half-written file under the final name
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(path + ".tmp", path)
    return count


def write_pool(files: dict[str, str], path: str) -> int:
    """Concatenate LESS's four files (`{source: local path}`, in that order) into one pool file; returns its rows."""
    return write_jsonl((row for source, file in files.items() for row in less_rows(read_jsonl(file), source)), path)


# ------------------------------------------------------------------------------------------------ the three targets
def hh_pair(row: dict) -> Pair | None:
    """An Anthropic HH row (`chosen`, `rejected`: whole dialogues) split at the last `\\n\\nAssistant:` of `chosen`,
    as TRL's and the DPO reference code's HH conversions do. None when the two do not share that prefix, or a reply is
    blank or both replies are the same (no preference to learn)."""
    chosen, rejected = row["chosen"], row["rejected"]
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        return None
    prompt = chosen[: cut + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        return None
    pair = Pair(prompt, chosen[len(prompt):], rejected[len(prompt):])
    return pair if pair.chosen.strip() and pair.rejected.strip() and pair.chosen != pair.rejected else None


def shp_pairs(rows: Iterable[dict]) -> dict[str, list[Pair]]:
    """SHP rows (one comment pair each) grouped by post, per subreddit (`domain` is `<subreddit>_<split>`): a post's
    best against its worst comment over the pairs whose score ratio is at least 2 (the authors' filter)."""
    posts: dict[str, dict] = {}
    for row in rows:
        scores = (row["score_A"], row["score_B"])
        if min(scores) <= 0 or max(scores) / min(scores) < 2:
            continue
        post = posts.setdefault(row["post_id"], {"subreddit": row["domain"].rsplit("_", 1)[0],
                                                 "prompt": f"{HUMAN} {row['history']}{ASSISTANT}", "scores": {}})  # fmt: skip
        for text, score in ((row["human_ref_A"], scores[0]), (row["human_ref_B"], scores[1])):
            post["scores"][" " + text] = max(score, post["scores"].get(" " + text, score))
    grouped: dict[str, list[Pair]] = {}
    for post in posts.values():
        ranked = sorted(post["scores"].items(), key=lambda item: -item[1])  # stable: ties keep their first order
        grouped.setdefault(post["subreddit"], []).append(Pair(post["prompt"], ranked[0][0], ranked[-1][0]))
    return grouped


def se_site(row: dict) -> str | None:
    """The subtask of a Stack Exchange row, from its question URL in `metadata`; None for other sites."""
    domains = {domain: name for name, domain in SE_SITES.items()}
    for url in row.get("metadata") or []:
        host = re.sub(r"^https?://", "", str(url)).split("/", 1)[0]
        if host in domains:
            return domains[host]
    return None


def se_pair(row: dict) -> Pair | None:
    """A Stack Exchange question with its best and worst answer by `pm_score` (texts as published, HTML included,
    as in the authors' SE files); None under two answers or when all score the same."""
    answers = row.get("answers") or []
    if len(answers) < 2:
        return None
    ranked = sorted(answers, key=lambda answer: -answer["pm_score"])
    if ranked[0]["pm_score"] == ranked[-1]["pm_score"]:
        return None
    return Pair(f"{HUMAN} {row['question']}{ASSISTANT}", " " + ranked[0]["text"], " " + ranked[-1]["text"])


def dialogue_messages(prompt: str) -> list[dict] | None:
    """An Anthropic-format prompt as TRL conversational messages (contents stripped); None unless it alternates
    user/assistant from a user turn to a user turn, which every chat template accepts."""
    if not prompt.startswith(HUMAN) or not prompt.endswith(ASSISTANT):
        return None
    parts = _TURN.split(prompt[: -len(ASSISTANT)])
    messages = [{"role": "user" if role == "Human" else "assistant", "content": text.strip()}
                for role, text in zip(parts[1::2], parts[2::2])]  # fmt: skip
    roles_ok = all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages))
    if not messages or not roles_ok or messages[-1]["role"] != "user" or not all(m["content"] for m in messages):
        return None
    return messages


def pair_row(pair: Pair, subtask: str, pair_format: str = "conversational") -> dict | None:
    """A validation row for `rose_hf.data.check_preference_dataset`; None when the conversational form is impossible."""
    if pair_format == "standard":
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected, "subtask": subtask}
    messages = dialogue_messages(pair.prompt)
    chosen, rejected = pair.chosen.strip(), pair.rejected.strip()
    if messages is None or chosen == rejected:
        return None
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "subtask": subtask}  # fmt: skip


def sample_shots(
    candidates: dict[str, list[Pair]], subtasks: Iterable[str], shots: int, seed: int = 0,
    pair_format: str = "conversational",
) -> list[dict]:  # fmt: skip
    """`shots` rows per subtask, subtasks in the given order (contiguous, as the authors' files are), one per prompt.

    Each subtask draws with its own `random.Random(f"{seed}:{subtask}")`, so adding a subtask never changes another's
    pairs. A subtask with fewer usable prompts than `shots` is an error naming it."""
    rows = []
    for subtask in subtasks:
        usable, seen = [], set()
        for pair in candidates.get(subtask, []):
            row = pair_row(pair, subtask, pair_format)
            if row is not None and pair.prompt not in seen:
                seen.add(pair.prompt)
                usable.append(row)
        if len(usable) < shots:
            raise ValueError(f"subtask {subtask!r} has {len(usable)} usable pairs, fewer than the {shots} shots asked.")
        rows.extend(random.Random(f"{seed}:{subtask}").sample(usable, shots))
    return rows


def validation_rows(target: str, rows_by_subtask: dict[str, Iterable[dict]], seed: int = 0,
                    pair_format: str = "conversational", shots: int | None = None) -> list[dict]:  # fmt: skip
    """The few-shot validation rows of `target` from upstream rows, grouped by subtask (SHP may pass all its rows
    under any key: they are regrouped by `domain`; SE rows are regrouped by site)."""
    spec = TARGETS[target]
    if target == "shp":
        candidates = shp_pairs(row for rows in rows_by_subtask.values() for row in rows)
    elif target == "se":
        candidates = {}
        for rows in rows_by_subtask.values():
            for row in rows:
                site, pair = se_site(row), se_pair(row)
                if site is not None and pair is not None:
                    candidates.setdefault(site, []).append(pair)
    else:
        candidates = {name: [p for p in map(hh_pair, rows) if p is not None] for name, rows in rows_by_subtask.items()}
    return sample_shots(candidates, spec.subtasks, spec.shots if shots is None else shots, seed, pair_format)


# ---------------------------------------------------------------------------------------- downloading (thin, online)
class HubUnreachableError(RuntimeError):
    pass


def _offline_message(detail: str = "") -> str:
    return ("build_paper_data downloads from the Hugging Face Hub, " + (detail or "but HF_HUB_OFFLINE (or "
            "HF_DATASETS_OFFLINE) is set") + ": run it once on a machine with network access, with HF_HUB_OFFLINE "
            "and HF_DATASETS_OFFLINE unset; the files it writes then work offline.")  # fmt: skip


def _unreachable(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is a failed connection: huggingface_hub's offline refusal, or the
    connection errors of requests or httpx, whichever the installed huggingface_hub uses."""
    names = {"ConnectError", "ConnectTimeout", "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}
    while error is not None:
        if isinstance(error, ConnectionError) or type(error).__name__ in names:
            return True
        error = error.__cause__ or error.__context__
    return False


def check_online() -> None:
    from huggingface_hub import constants

    flags = [os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")]
    if constants.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags):
        raise HubUnreachableError(_offline_message())


def _download_pool(path: str) -> int:
    from huggingface_hub import hf_hub_download

    files = {name: hf_hub_download(LESS_REPO, f"train/processed/{name}/{name}_data.jsonl", repo_type="dataset")
             for name in LESS_SOURCES}  # fmt: skip
    return write_pool(files, path)


def _hub_rows(target: str) -> dict[str, Iterable[dict]]:
    from datasets import load_dataset

    spec = TARGETS[target]
    if target == "shp":  # one split of all 18 subreddits is small (SHP's validation split: about 18k rows)
        return {"all": load_dataset(spec.hub_name, split=spec.split)}
    if target == "se":  # one folder per site: the whole data set is tens of GB
        return {site: load_dataset(spec.hub_name, data_dir=f"data/{domain}", split=spec.split)
                for site, domain in SE_SITES.items()}  # fmt: skip
    return {name: (row for subset in subsets for row in load_dataset(spec.hub_name, data_dir=subset, split=spec.split))
            for name, subsets in HH_SUBSETS.items()}  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/build_paper_data.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--output_dir", default="data", help="where to write the files (the recipes read data/)")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=["shp", "se", "hh"],
                        help="which <target>_validation.jsonl files to write")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot draws")
    parser.add_argument("--pair_format", choices=["conversational", "standard"], default="conversational",
                        help="TRL conversational messages, or the authors' raw Human:/Assistant: strings")  # fmt: skip
    parser.add_argument("--skip_pool", action="store_true", help="write only the validation files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    check_online()
    try:
        if not args.skip_pool:
            path = os.path.join(args.output_dir, POOL_FILE)
            print(f"{path}: {_download_pool(path):,} rows")
        for target in args.targets:
            rows = validation_rows(target, _hub_rows(target), args.seed, args.pair_format)
            path = os.path.join(args.output_dir, f"{target}_validation.jsonl")
            print(f"{path}: {write_jsonl(rows, path)} pairs")
    except Exception as error:
        if not _unreachable(error):
            raise
        raise HubUnreachableError(_offline_message(f"but it could not reach the Hub ({error})")) from error
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except HubUnreachableError as error:  # the message says what to do; a traceback adds nothing
        raise SystemExit(f"error: {error}") from None

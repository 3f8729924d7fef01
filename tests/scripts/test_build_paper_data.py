"""scripts/build_paper_data.py offline: each source's conversion on rows of its upstream schema, the HH path on the
real shared file, and the written files through rose_hf.data's checks and the paper recipes' parser."""

import gzip
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("build_paper_data", ROOT / "scripts" / "build_paper_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bpd = _load_script()


def _shared_hh() -> Path | None:
    # ../shared/data/ beside the checkout (or beside any folder above it, for worktrees nested deeper).
    for folder in (ROOT, *ROOT.parents):
        path = folder.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
        if path.is_file():
            return path
    return None


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


# LESS's files (open-instruct's format): {"dataset", "id", "messages"}.
LESS = {
    "flan_v2": [{"dataset": "flan_v2", "id": "flan_v2_0", "messages": [
        {"role": "user", "content": "Translate to French: cat"}, {"role": "assistant", "content": "chat"}]}],
    "cot": [{"dataset": "cot", "id": "cot_0", "messages": [
        {"role": "user", "content": "2+2? Think step by step."}, {"role": "assistant", "content": "2+2=4. So 4."}]}],
    "dolly": [{"dataset": "dolly", "id": "dolly_0", "messages": [
        {"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}]}],
    "oasst1": [{"dataset": "oasst1", "id": "oasst1_0", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}],
}  # fmt: skip


def test_less_pool_keeps_the_messages_and_names_each_source(tmp_path):
    files = {name: _write_jsonl(tmp_path / f"{name}_data.jsonl", rows) for name, rows in LESS.items()}
    path = str(tmp_path / "less_pool.jsonl")
    assert bpd.write_pool(files, path) == 4
    written = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    assert written == [
        {"messages": [{"role": "user", "content": "Translate to French: cat"},
                      {"role": "assistant", "content": "chat"}], "source": "flan_v2", "id": "flan_v2_0"},
        {"messages": [{"role": "user", "content": "2+2? Think step by step."},
                      {"role": "assistant", "content": "2+2=4. So 4."}], "source": "cot", "id": "cot_0"},
        {"messages": [{"role": "user", "content": "Name a primary colour."},
                      {"role": "assistant", "content": "Red."}], "source": "dolly", "id": "dolly_0"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}],
         "source": "oasst1", "id": "oasst1_0"},
    ]  # fmt: skip


def test_less_rows_refuse_another_format():
    with pytest.raises(ValueError, match="dolly row 0 has no `messages`"):
        list(bpd.less_rows([{"instruction": "x", "response": "y"}], "dolly"))


def test_hh_pair_splits_at_the_last_assistant_turn():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant: No, I can't help.",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant: Sure, first..."}
    pair = bpd.hh_pair(row)
    assert pair == bpd.Pair("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant:",
                            " No, I can't help.", " Sure, first...")  # fmt: skip
    assert bpd.pair_row(pair, "harmless") == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Rob a bank?"}],
        "chosen": [{"role": "assistant", "content": "No, I can't help."}],
        "rejected": [{"role": "assistant", "content": "Sure, first..."}],
        "subtask": "harmless",
    }  # fmt: skip
    assert bpd.pair_row(pair, "harmless", "standard") == {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant:",
        "chosen": " No, I can't help.", "rejected": " Sure, first...", "subtask": "harmless"}
    same = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey", "rejected": "\n\nHuman: Hi\n\nAssistant: Hey"}
    forked = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey", "rejected": "\n\nHuman: Yo\n\nAssistant: Hey"}
    blank = {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hey"}
    assert bpd.hh_pair(same) is None and bpd.hh_pair(forked) is None and bpd.hh_pair(blank) is None


def test_dialogue_messages_need_alternating_turns():
    assert bpd.dialogue_messages("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert bpd.dialogue_messages("\n\nHuman: a\n\nHuman: c\n\nAssistant:") is None  # two user turns in a row
    assert bpd.dialogue_messages("Hi\n\nAssistant:") is None


def _shp(post, domain, a, b, score_a, score_b, history="Why is bread sticky?"):
    """One row of stanfordnlp/SHP, every field of its schema."""
    return {"post_id": post, "domain": domain, "upvote_ratio": 0.98, "history": history, "c_root_id_A": post + "a",
            "c_root_id_B": post + "b", "created_at_utc_A": 1, "created_at_utc_B": 2, "score_A": score_a,
            "score_B": score_b, "human_ref_A": a, "human_ref_B": b, "labels": int(score_a > score_b),
            "seconds_difference": 1.0, "score_ratio": max(score_a, score_b) / min(score_a, score_b)}  # fmt: skip


def test_shp_pairs_a_posts_best_comment_against_its_worst():
    rows = [
        _shp("p1", "askbaking_validation", "Knead longer.", "Add flour.", 10, 3),
        _shp("p1", "askbaking_validation", "Rest it.", "Knead longer.", 4, 10),
        _shp("p2", "askbaking_validation", "x", "y", 3, 2),  # score ratio 1.5 < 2: the authors drop it
        _shp("p3", "askvet_validation", "See a vet.", "Wait.", 2, 8, history="My cat sneezes."),
    ]
    assert bpd.shp_pairs(rows) == {
        "askbaking": [bpd.Pair("\n\nHuman: Why is bread sticky?\n\nAssistant:", " Knead longer.", " Add flour.")],
        "askvet": [bpd.Pair("\n\nHuman: My cat sneezes.\n\nAssistant:", " Wait.", " See a vet.")],
    }


def _se(qid, site, scores, question="<p>How do I cite a preprint?</p>"):
    """One row of HuggingFaceH4/stack-exchange-preferences, every field of its schema."""
    answers = [{"answer_id": qid * 10 + i, "author": "a", "author_id": i, "author_profile": f"https://{site}/users/{i}",
                "pm_score": score, "selected": False, "text": f"<p>answer {i}</p>"} for i, score in enumerate(scores)]
    return {"qid": qid, "question": question, "answers": answers, "date": "2020/01/01",
            "metadata": [f"https://{site}/questions/{qid}", f"https://{site}", f"https://{site}/users/1"]}  # fmt: skip


def test_se_pairs_the_best_answer_against_the_worst_and_finds_the_site():
    row = _se(7, "academia.stackexchange.com", [2, 5, -1])
    assert bpd.se_site(row) == "academia"
    assert bpd.se_pair(row) == bpd.Pair("\n\nHuman: <p>How do I cite a preprint?</p>\n\nAssistant:",
                                        " <p>answer 1</p>", " <p>answer 2</p>")  # fmt: skip
    assert bpd.se_site(_se(8, "askubuntu.com", [1, 2])) == "askubuntu"
    assert bpd.se_site(_se(9, "math.stackexchange.com", [1, 2])) is None  # not one of the paper's 10 sites
    assert bpd.se_pair(_se(10, "askubuntu.com", [3])) is None and bpd.se_pair(_se(11, "askubuntu.com", [2, 2])) is None


@pytest.fixture(scope="module")
def hh_rows():
    path = _shared_hh()
    if path is None:
        pytest.skip("../shared/data/hh-rlhf/harmless-base-test.jsonl.gz is absent (the real Anthropic HH pairs)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_hh_path_on_the_real_harmless_pairs(hh_rows):
    assert len(hh_rows) == 2312
    pairs = [(row, bpd.hh_pair(row)) for row in hh_rows]
    kept = [(row, pair) for row, pair in pairs if pair is not None]
    assert len(kept) == 2304  # 8 rows have identical replies or turns that differ before the last reply
    for row, pair in kept:
        assert pair.prompt.endswith("\n\nAssistant:") and pair.prompt.count("\n\nAssistant:") == row["chosen"][
            : len(pair.prompt)].count("\n\nAssistant:")  # fmt: skip
        assert row["chosen"] == pair.prompt + pair.chosen and row["rejected"] == pair.prompt + pair.rejected
        assert pair.chosen != pair.rejected and "\n\nAssistant:" not in pair.chosen
    rows = bpd.validation_rows("hh", {"harmless": hh_rows, "helpful": hh_rows[1000:]}, seed=0)
    assert [row["subtask"] for row in rows] == ["harmless", "helpful"]  # 2 subtasks x 1 shot, harmless first
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"] != row["rejected"]
    five = bpd.validation_rows("hh", {"harmless": hh_rows, "helpful": hh_rows}, seed=0, shots=5)
    assert Counter(row["subtask"] for row in five) == {"harmless": 5, "helpful": 5}
    assert len({json.dumps(row["prompt"]) for row in five[:5]}) == 5  # one pair per prompt
    again = bpd.validation_rows("hh", {"harmless": hh_rows, "helpful": hh_rows}, seed=0, shots=5)
    other = bpd.validation_rows("hh", {"harmless": hh_rows, "helpful": hh_rows}, seed=1, shots=5)
    assert again == five and other != five


def test_too_few_pairs_name_the_subtask():
    with pytest.raises(ValueError, match="subtask 'askacademia' has 0 usable pairs"):
        bpd.validation_rows("shp", {"all": [_shp("p", "askbaking_validation", "a", "b", 9, 1)]})


def _paper_inputs():
    """Upstream rows enough for the paper's shots: 5 posts in each of SHP's 18 subreddits, 2 questions on each of the
    10 SE sites, 1 HH dialogue per subset."""
    shp = [_shp(f"{sub}{i}", f"{sub}_validation", f"good {i}", f"bad {i}", 10 + i, 2, history=f"{sub} question {i}?")
           for sub in bpd.SHP_SUBREDDITS for i in range(6)]  # fmt: skip
    se = {site: [_se(i, domain, [3, 1], question=f"<p>{site} {i}?</p>") for i in range(3)]
          for site, domain in bpd.SE_SITES.items()}  # fmt: skip
    hh = {"harmless": [{"chosen": "\n\nHuman: Steal a car?\n\nAssistant: No.",
                        "rejected": "\n\nHuman: Steal a car?\n\nAssistant: Sure."}],
          "helpful": [{"chosen": "\n\nHuman: Boil an egg?\n\nAssistant: Ten minutes.",
                       "rejected": "\n\nHuman: Boil an egg?\n\nAssistant: No idea."}]}  # fmt: skip
    return {"shp": {"all": shp}, "se": se, "hh": hh}


@pytest.mark.parametrize("pair_format", ["conversational", "standard"])
def test_written_files_pass_the_checks_and_the_paper_recipes(tmp_path, pair_format):
    from rose_hf.cli.arguments import parse
    from rose_hf.cli.loading import load_data
    from rose_hf.data import check_preference_dataset, check_sft_dataset

    pool = str(tmp_path / bpd.POOL_FILE)
    bpd.write_pool({name: _write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in LESS.items()}, pool)
    expected = {"shp": (18, 5), "se": (10, 2), "hh": (2, 1)}  # the paper's subtasks x shots
    for target, inputs in _paper_inputs().items():
        path = str(tmp_path / f"{target}_validation.jsonl")
        bpd.write_jsonl(bpd.validation_rows(target, inputs, seed=0, pair_format=pair_format), path)
        recipe = ROOT / "recipes" / "paper" / f"llama3.1-8b_{target}.yaml"
        assert "scripts/build_paper_data.py" in recipe.read_text().split("\n\n")[0], "the opening comment names it"
        script_args, *_ = parse(["--config", str(recipe), "--bf16", "false", "--use_cpu", "true",
                                 "--dataset_name", pool, "--preference_dataset_name", path])  # fmt: skip
        pool_data, pairs = load_data(script_args)
        assert check_sft_dataset(pool_data) == "messages"
        assert pool_data["source"] == ["flan_v2", "cot", "dolly", "oasst1"]
        check_preference_dataset(pairs)
        subtasks, shots = expected[target]
        counts = Counter(pairs["subtask"])
        assert len(counts) == subtasks and set(counts.values()) == {shots} and len(pairs) == subtasks * shots
        assert isinstance(pairs[0]["prompt"], list if pair_format == "conversational" else str)


def test_offline_the_download_refuses_with_the_setting_to_change(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bpd.HubUnreachableError, match="HF_HUB_OFFLINE"):
        bpd.main(["--output_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())

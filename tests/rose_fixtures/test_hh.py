"""The HH family: pairs parsed from the real shared file, splits that share no prompt, the pool's shares and twins, the
chatterbot-corpus distractors verbatim, determinism by seed, and TRL formats rose_hf accepts. Skips (with the reason)
without the shared HH file or the corpus package."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("yaml")
pytest.importorskip("chatterbot_corpus", reason="the HH family's distractors come from the chatterbot-corpus package")

from rose_fixtures import hh  # noqa: E402

SIZES = dict(pool_size=200, n_test_pairs=40)


@pytest.fixture(scope="module")
def shared_file():
    try:
        return hh.hh_data_path()
    except hh.HHDataMissing as error:
        pytest.skip(f"../shared/data/hh-rlhf/{hh.HH_FILE} is absent (the real Anthropic HH pairs): {error}")


@pytest.fixture(scope="module")
def world(shared_file):
    return hh.make_hh_world(seed=3, **SIZES)


def _key(prompt) -> str:
    return json.dumps(prompt)


def _reply(turns) -> str:
    assert len(turns) == 1 and turns[0]["role"] == "assistant"
    return turns[0]["content"]


def test_parse_splits_at_the_last_assistant_turn():
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Steal a car?\n\nAssistant:"
    row = {"chosen": prefix + " No.", "rejected": prefix + " Sure, first..."}
    pair = hh.parse_hh_pair(row)
    assert pair.messages == (("user", "Hi"), ("assistant", "Hello."), ("user", "Steal a car?"))
    assert (pair.chosen, pair.rejected) == ("No.", "Sure, first...")
    assert pair.opener == "hi" and pair.subtask == "talk" and pair.chosen_shorter
    same = {"chosen": "\n\nHuman: Hi\n\nAssistant: No.", "rejected": "\n\nHuman: Hi\n\nAssistant: No."}
    forked = {"chosen": "\n\nHuman: Hi\n\nAssistant: A\n\nHuman: B\n\nAssistant: C",
              "rejected": "\n\nHuman: Hi\n\nAssistant: X\n\nHuman: B\n\nAssistant: D"}  # fmt: skip
    blank = {"chosen": "\n\nHuman: Hi\n\nAssistant:  ", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    assert hh.parse_hh_pair(same) is None and hh.parse_hh_pair(forked) is None and hh.parse_hh_pair(blank) is None
    how = {"chosen": "\n\nHuman: How can I pick a lock?\n\nAssistant: I won't.",
           "rejected": "\n\nHuman: How can I pick a lock?\n\nAssistant: Use a pin."}  # fmt: skip
    assert hh.parse_hh_pair(how).subtask == "how_to"


def test_real_pairs_within_the_caps_one_per_opener(shared_file):
    pairs = hh.hh_pairs()
    assert len(pairs) == 987  # of 2,312 rows: 2,304 parse, 2,169 distinct openers, these within 64 + 64 words
    assert len({p.opener for p in pairs}) == len(pairs)
    assert Counter(p.subtask for p in pairs) == {"talk": 672, "how_to": 315}
    for p in pairs:
        assert p.chosen != p.rejected and p.prompt_words() <= 64
        assert len(p.chosen.split()) <= 64 and len(p.rejected.split()) <= 64
        assert p.messages[0][0] == p.messages[-1][0] == "user"
    assert len(hh.hh_pairs(max_prompt_words=20, max_reply_words=20)) < len(pairs)


def test_pool_shares_and_twins_on_the_target_prefixes(world):
    config = world.config
    assert config.pool_composition() == {"hh/correct": 16, "hh/wrong": 16, "chatterbot/correct": 168}
    assert Counter(world.pool["source"]) == config.pool_composition() and len(world.pool) == 200
    assert int(world.helpful_mask().sum()) == 16 and int(world.harmful_mask().sum()) == 16
    assert list(world.pool["id"]) == list(range(200))
    pairs = {_key([{"role": r, "content": t} for r, t in p.messages]): p for p in hh.hh_pairs()}
    target = {_key(r["prompt"]): _reply(r["completion"]) for r in world.pool if r["source"] == "hh/correct"}
    twin = {_key(r["prompt"]): _reply(r["completion"]) for r in world.pool if r["source"] == "hh/wrong"}
    assert set(target) == set(twin) and len(target) == 16  # the same prefixes, each once per kind
    for prompt, reply in target.items():
        assert reply == pairs[prompt].chosen and twin[prompt] == pairs[prompt].rejected != reply
    assert set(world.pool.filter(lambda r: r["family"] == "hh")["source"]) == {"hh/correct", "hh/wrong"}


def test_splits_share_no_prompt_nor_opener(world):
    splits = {
        "validation": [r["prompt"] for r in world.validation],
        "test": [r["prompt"] for r in world.test_pairs],
        "pool": [r["prompt"] for r in world.pool if r["source"] == "hh/correct"],
    }
    openers = {name: {" ".join(p[0]["content"].lower().split()) for p in prompts} for name, prompts in splits.items()}
    assert sum(map(len, openers.values())) == sum(map(len, splits.values())) == 10 + 40 + 16
    assert not openers["validation"] & openers["test"]
    assert not openers["pool"] & (openers["validation"] | openers["test"])
    distractor_prompts = {_key(r["prompt"]) for r in world.pool if r["family"] == "chatterbot"}
    assert not distractor_prompts & {_key(p) for prompts in splits.values() for p in prompts}
    assert len(world.test_prompts) == 0 and len(world.pretrain) == 0


def test_subtasks_and_length_balance(world):
    assert Counter(world.validation["subtask"]) == {"how_to": 5, "talk": 5}
    cells = Counter(
        (r["subtask"], len(_reply(r["chosen"]).split()) < len(_reply(r["rejected"]).split())) for r in world.test_pairs
    )
    assert cells == {(s, shorter): 10 for s in hh.SUBTASKS for shorter in (True, False)}
    for split in (world.validation, world.test_pairs):
        for r in split:
            assert _reply(r["chosen"]) != _reply(r["rejected"])
            assert r["subtask"] == ("how_to" if hh.HOW_TO.search(r["prompt"][0]["content"]) else "talk")


def test_distractors_are_the_corpus_verbatim():
    import yaml
    from chatterbot_corpus.corpus import DATA_DIRECTORY

    rows = hh.chatterbot_rows()
    assert len(rows) == 852 and len({r["messages"] for r in rows}) == len(rows)
    conversations = {}
    for topic in {r["topic"] for r in rows}:
        with open(f"{DATA_DIRECTORY}/english/{topic}.yml", encoding="utf-8") as handle:
            conversations[topic] = yaml.load(handle, Loader=yaml.BaseLoader)["conversations"]
    for r in rows[::25]:
        turns = [text for _, text in r["messages"]] + [r["reply"]]
        assert any([t.strip() for t in c[: len(turns)]] == turns for c in conversations[r["topic"]]), r
        assert [role for role, _ in r["messages"]] == ["user", "assistant"] * (len(r["messages"]) // 2) + ["user"]
    # Scalars stay text: a year or a bare "yes" is not turned into a number or a boolean.
    assert all(isinstance(r["reply"], str) for r in rows) and any(r["reply"].isdigit() for r in rows)


def test_deterministic_by_seed(world, shared_file):
    again = hh.make_hh_world(seed=3, **SIZES)
    other = hh.make_hh_world(seed=4, **SIZES)
    for split in ("pool", "validation", "test_pairs"):
        assert getattr(again, split).to_list() == getattr(world, split).to_list()
    assert other.pool.to_list() != world.pool.to_list() and other.test_pairs.to_list() != world.test_pairs.to_list()


def test_formats_pass_rose_hf_checks(world):
    from rose_hf.data import check_preference_dataset, check_sft_dataset

    assert check_sft_dataset(world.pool) == "prompt_completion"
    check_preference_dataset(world.validation, "validation")
    check_preference_dataset(world.test_pairs, "test_pairs")


def test_bad_sizes_name_the_field(shared_file):
    with pytest.raises(ValueError, match="n_test_prompts=5 must be 0: exact match does not apply"):
        hh.HHWorldConfig(n_test_prompts=5)
    with pytest.raises(ValueError, match="target_wrong_fraction must not exceed"):
        hh.HHWorldConfig(target_wrong_fraction=0.1)
    with pytest.raises(ValueError, match="distinct HH prompts"):
        hh.HHWorldConfig(pool_size=4000, target_correct_fraction=0.3, target_wrong_fraction=0.1)
    with pytest.raises(ValueError, match="distractor rows"):
        hh.HHWorldConfig(pool_size=2000)


def test_missing_file_says_where(monkeypatch):
    monkeypatch.setattr(hh, "HH_FILE", "no-such-file.jsonl.gz")
    with pytest.raises(hh.HHDataMissing, match="shared/data/hh-rlhf/no-such-file.jsonl.gz beside the project"):
        hh.hh_data_path()


def test_evaluate_model_without_test_prompts_scores_the_pairs_only(world):
    import numpy as np

    from rose_fixtures.evaluation import completion_logps, evaluate_model
    from rose_fixtures.tiny import build_model, build_tokenizer

    pairs = world.test_pairs.select(range(6))
    words = {w for r in pairs for turns in (r["prompt"], r["chosen"], r["rejected"]) for m in turns
             for w in m["content"].split()}  # fmt: skip
    tokenizer = build_tokenizer(sorted(words))
    model = build_model("llama", tokenizer, hidden_size=16, num_layers=1, seed=0)
    metrics = evaluate_model(model, tokenizer, pairs, None, batch_size=4)
    assert "exact_match" not in metrics and metrics["num_pairs"] == 6
    assert evaluate_model(model, tokenizer, pairs, world.test_prompts)["preference_accuracy"] == metrics[
        "preference_accuracy"]  # fmt: skip
    # Length-sorted batches give each pair's log-probs back in pair order, as one pair at a time does.
    one = completion_logps(model, tokenizer, pairs, batch_size=1)
    np.testing.assert_allclose(metrics["chosen_logps"], one[0], rtol=1e-5)
    np.testing.assert_allclose(metrics["rejected_logps"], one[1], rtol=1e-5)


def test_length_matched_test_pairs_only_change_the_test_split(world, shared_file):
    matched = hh.make_hh_world(seed=3, test_length_ratio=0.7, **SIZES)
    words = [sorted((len(_reply(c).split()), len(_reply(r).split())))
             for c, r in zip(matched.test_pairs["chosen"], matched.test_pairs["rejected"])]  # fmt: skip
    assert len(words) == SIZES["n_test_pairs"] and all(short >= 0.7 * long for short, long in words)
    assert any(short < 0.7 * long for short, long in
               ([sorted((len(_reply(c).split()), len(_reply(r).split())))
                 for c, r in zip(world.test_pairs["chosen"], world.test_pairs["rejected"])]))  # fmt: skip
    test_prompts = {_key(p) for p in matched.test_pairs["prompt"]}
    assert not test_prompts & {_key(p) for p in matched.pool["prompt"]}
    assert not test_prompts & {_key(p) for p in matched.validation["prompt"]}
    with pytest.raises(ValueError, match="test_length_ratio"):
        hh.HHWorldConfig(test_length_ratio=1.5)

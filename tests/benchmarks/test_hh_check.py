"""The HH check's verdict and report on made-up per-seed figures (no model runs here), and its command line."""

from __future__ import annotations

from benchmarks.quality.hh_check import HHCheckConfig, make_parser, render_markdown, summarize, verdict


def _seed(seed: int, base_pref: float, random_: float, oracle: float, oracle_pref: float) -> dict:
    def model(reward: float, pref: float, helpful: int) -> dict:
        return {"reward_accuracy": reward, "mean_reward_margin": reward - 0.5, "preference_accuracy": pref,
                "mean_margin": 0.0, "rows": 20, "helpful_rows": helpful, "harmful_rows": 0, "train_loss": 1.0,
                "reward_accuracy_by": {"subtask": {"how_to": reward, "talk": reward},
                                       "length": {"chosen_shorter": reward, "chosen_longer": reward}}}  # fmt: skip

    return {"seed": seed, "seconds": 1.0, "test_pairs": 200,
            "pool": {"rows": 400, "hh/correct": 32, "hh/wrong": 32, "chatterbot/correct": 336},
            "base": {"preference_accuracy": base_pref, "mean_margin": 0.0},
            "trained": {"random": model(random_, base_pref, 2), "oracle": model(oracle, oracle_pref, 20)}}  # fmt: skip


def _results(per_seed: list[dict]) -> dict:
    rows = summarize(per_seed)
    return {"config": vars(HHCheckConfig()) | {"seeds": [0, 1, 2]}, "per_seed": per_seed, "summary": rows,
            "verdict": verdict(per_seed, rows), "seconds": 3.0}  # fmt: skip


def test_a_clear_gap_separates():
    per_seed = [_seed(0, 0.50, 0.52, 0.70, 0.60), _seed(1, 0.52, 0.50, 0.72, 0.61), _seed(2, 0.51, 0.53, 0.69, 0.62)]
    results = _results(per_seed)
    check = results["verdict"]
    assert check["beats_random"] and check["beats_base"] and check["separates"]
    assert abs(check["mean_gap_vs_random"] - (0.18 + 0.22 + 0.16) / 3) < 1e-9
    markdown = render_markdown(results)
    assert "The family separates methods: **True**" in markdown and "| 1 | oracle | 20 (20/0) | 0.720 |" in markdown


def test_a_gap_inside_the_spread_does_not():
    # Oracle above random in every seed, but by less than the seeds move it.
    per_seed = [_seed(0, 0.50, 0.50, 0.55, 0.60), _seed(1, 0.52, 0.60, 0.66, 0.61), _seed(2, 0.51, 0.55, 0.58, 0.62)]
    check = _results(per_seed)["verdict"]
    assert min(check["oracle_minus_random_reward_accuracy"]) > 0 and not check["beats_random"]
    assert not check["separates"]


def test_the_parser_builds_the_design():
    args = vars(make_parser().parse_args([]))
    assert HHCheckConfig(**{**args, "seeds": tuple(args["seeds"])}) == HHCheckConfig()
    changed = make_parser().parse_args(["--pool_size", "800", "--epochs", "8", "--seeds", "0"])
    assert (changed.pool_size, changed.epochs, changed.seeds) == (800, 8, [0])

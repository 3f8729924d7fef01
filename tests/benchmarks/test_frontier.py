"""The frontier benchmark's choice of a default (`benchmarks.quality.frontier_analysis.choose_default`): the rule
fixed before any result, checked on hand-made worlds whose answer is known."""

from benchmarks.quality.frontier_analysis import CANDIDATE, TODAY, _point_name, choose_default, confirm_default


def world(points: dict[str, tuple[float, float, float]]) -> dict:
    """points: name -> (cost, relative precision, harmful share)."""
    return {"points": [{"name": n, "cost": c, "relative_precision": p, "harmful_share": h}
                       for n, (c, p, h) in points.items()]}  # fmt: skip


TODAY_NAME = _point_name(*TODAY)
CHEAP = _point_name("2 and 4", 0.2, "dpo+sft")
CHEAPER = _point_name("last", 0.1, "dpo+sft")
OTHER_OBJECTIVE = _point_name("last", 0.1, "dpo")


def test_the_least_harmful_qualifying_point_of_the_default_ranking_is_chosen():
    worlds = [world({TODAY_NAME: (2.6, 0.90, 0.10), CHEAP: (0.7, 0.89, 0.05), CHEAPER: (0.5, 0.95, 0.20),
                     OTHER_OBJECTIVE: (0.5, 1.00, 0.00)})] * 2  # fmt: skip
    choice = choose_default(worlds)
    # CHEAPER is more precise but more harmful; another objective never competes (issue 23 chooses objectives).
    assert choice["chosen"] == CHEAP and choice["target_met_on_dev"]


def test_a_point_more_than_the_slack_below_today_does_not_qualify_and_the_miss_is_reported():
    worlds = [world({TODAY_NAME: (2.6, 0.90, 0.10), CHEAP: (0.7, 0.80, 0.00), CHEAPER: (0.5, 0.85, 0.30)})]
    choice = choose_default(worlds)
    assert not choice["target_met_on_dev"]
    assert choice["chosen"] == CHEAPER  # the best precision within the cost target, harm notwithstanding


def test_means_over_worlds_decide_not_one_world():
    first = world({TODAY_NAME: (2.6, 0.90, 0.10), CHEAP: (0.7, 1.00, 0.00), CHEAPER: (0.5, 0.90, 0.00)})
    second = world({TODAY_NAME: (2.6, 0.90, 0.10), CHEAP: (0.7, 0.70, 0.00), CHEAPER: (0.5, 0.90, 0.00)})
    assert choose_default([first, second])["chosen"] == CHEAPER  # CHEAP's mean precision is 0.85 < 0.88


CANDIDATE_NAME = _point_name(*CANDIDATE)


def test_the_candidate_is_confirmed_within_the_slack_and_the_cost_target():
    worlds = [world({TODAY_NAME: (2.6, 0.90, 0.10), CANDIDATE_NAME: (0.9, 0.89, 0.20)})] * 2
    confirmed = confirm_default(worlds)
    assert confirmed["confirmed"] and confirmed["candidate_relative_precision"] == 0.89


def test_the_candidate_is_refused_below_the_slack_or_above_the_cost_target():
    below = [world({TODAY_NAME: (2.6, 0.90, 0.10), CANDIDATE_NAME: (0.9, 0.87, 0.00)})]
    costly = [world({TODAY_NAME: (2.6, 0.90, 0.10), CANDIDATE_NAME: (1.1, 0.95, 0.00)})]
    assert not confirm_default(below)["confirmed"] and not confirm_default(costly)["confirmed"]

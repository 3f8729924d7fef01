"""The HH family table's summary (`benchmarks.quality.hh_family.summary`): means and ranges over worlds, and no figure
where a method has none."""

from benchmarks.quality.hh_family import METHODS, summary


def _world(value: float) -> dict:
    figures = {"precision": value, "harmful_share": value / 2, "relative_precision": value, "overlap": None,
               "cost": 1.0}  # fmt: skip
    return {"methods": {name: dict(figures) for name in METHODS}}


def test_summary_gives_mean_and_range_and_skips_missing_figures():
    out = summary([_world(0.2), _world(0.6)])
    assert out["oracle"]["precision"] == {"mean": 0.4, "min": 0.2, "max": 0.6}
    assert abs(out["random"]["harmful_share"]["mean"] - 0.2) < 1e-12
    assert out["LESS (sft)"]["overlap"] is None

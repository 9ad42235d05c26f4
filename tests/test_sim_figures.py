"""Figures a reader can use: titles say N, α and seeds; plots and summary share statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.overrides import with_overrides
from sim.plots import accuracy_series, all_plots, figure_title
from sim.scenario import Scenario
from sim.sweep import grid_points, group_by_label, parse_set, run_sweep, summary_rows


def test_worst_peer_curve_and_summary_agree_and_titles_say_what_ran(tmp_path: Path) -> None:
    base = with_overrides(
        Scenario(),
        {
            "n": 8,
            "rounds": 3,
            "partition.scheme": "dirichlet",
            "partition.alpha": 0.3,
            "training.lr": 0.5,
        },
    )
    points = grid_points(base, parse_set(["topology=ring,complete"]), 3)
    results = run_sweep(points, tmp_path)
    groups = group_by_label(points, results)
    rows = {row["label"]: row for row in summary_rows(points, results)}
    for label, group in groups.items():
        series = accuracy_series(group)
        finals = [r.records[-1] for r in group]
        assert rows[label]["final_accuracy_min"] == round(float(series["worst"][-1]), 4)
        assert rows[label]["final_accuracy_mean"] == round(float(series["mean"][-1]), 4)
        assert series["low"][-1] == min(f.accuracy_mean for f in finals)
        assert series["high"][-1] == max(f.accuracy_mean for f in finals)
    # The seeds really differ here, so a mean-over-seeds worst curve would not match.
    worst_by_seed = {r.records[-1].accuracy_min for g in groups.values() for r in g}
    assert len(worst_by_seed) > 1
    title = figure_title(groups, "accuracy")
    assert title.splitlines()[1] == "N = 8, dirichlet α = 0.3, seeds per curve: 3"
    iid = with_overrides(base, {"partition.scheme": "iid", "n": 16})
    mixed = {**groups, "iid": run_sweep(grid_points(iid, [], 1), tmp_path)}
    assert figure_title(mixed, "x").splitlines()[1] == (
        "N = 8, 16, dirichlet, iid α = 0.3, seeds per curve: 1, 3"
    )
    written = all_plots(groups, tmp_path / "figures")
    assert [p.name for p in written] == ["accuracy.png", "consensus.png"]
    assert all(p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("scheme", ["iid", "classes"])
def test_title_names_the_split_without_alpha(tmp_path: Path, scheme: str) -> None:
    base = with_overrides(Scenario(), {"n": 4, "rounds": 1, "partition.scheme": scheme})
    groups = {"a": run_sweep(grid_points(base, [], 1), tmp_path)}
    assert figure_title(groups, "t").splitlines()[1] == f"N = 4, {scheme} split, seeds per curve: 1"

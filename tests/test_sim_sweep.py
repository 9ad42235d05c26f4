"""Reproducibility, sweeps that resume, and the ``p2pfed sim`` commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pfed.cli import main
from p2pfed.errors import ConfigError
from sim.engine import Simulator
from sim.overrides import with_overrides
from sim.results import read_result
from sim.scenario import Scenario
from sim.sweep import SweepPoint, grid_points, parse_set, point_path, run_point, run_sweep


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small(**overrides: object) -> Scenario:
    base: dict[str, object] = {
        "n": 12,
        "rounds": 6,
        "topology": "torus",
        "partition.scheme": "dirichlet",
        "faults.dropout": 0.2,
        "faults.link_failure": 0.1,
        "faults.straggler_prob": 0.3,
        "faults.byzantine": 1,
        "privacy.enabled": True,
        "privacy.noise_multiplier": 0.8,
    }
    base.update(overrides)
    return with_overrides(Scenario(), base)  # type: ignore[arg-type]


def test_same_seed_gives_identical_bytes_and_other_seeds_differ() -> None:
    first = run_point(_small()).to_json()
    second = run_point(_small()).to_json()
    assert first == second
    assert run_point(_small(seed=1)).to_json() != first


def test_time_varying_and_tracking_runs_are_reproducible() -> None:
    scenario = _small(
        topology="one_peer_exponential",
        n=16,
        algorithm="gradient_tracking",
        **{"privacy.enabled": False, "model.name": "mlp"},
    )
    assert run_point(scenario).to_json() == run_point(scenario).to_json()


def test_parse_set_and_grid() -> None:
    grid = parse_set(["topology=ring,exponential", "n=16,32"])
    assert grid == [("topology", ["ring", "exponential"]), ("n", [16, 32])]
    points = grid_points(Scenario(seed=5), grid, seeds=2)
    assert len(points) == 8
    assert [p.seed for p in points[:2]] == [5, 6]
    assert points[0].label == "topology=ring n=16"
    assert len({p.digest for p in points}) == 8
    with pytest.raises(ConfigError, match="PATH=VALUE"):
        parse_set(["topology"])
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        grid_points(Scenario(), grid, seeds=0)


def test_sweep_resumes_without_redoing_finished_points(tmp_path: Path) -> None:
    points = grid_points(_small(rounds=3), parse_set(["topology=ring,torus"]), seeds=2)
    ran: list[SweepPoint] = []

    def on_point(point: SweepPoint, stored: bool) -> None:
        if not stored:
            ran.append(point)

    first = run_sweep(points, tmp_path, on_point)
    assert len(ran) == 4
    # Interrupted: one point's file lost, another left corrupt, a third from another digest.
    point_path(tmp_path, points[0]).unlink()
    point_path(tmp_path, points[1]).write_text("{ half a fi")
    other = point_path(tmp_path, points[3])
    other.write_text(other.read_text().replace(points[3].digest, "0" * 64))
    ran.clear()
    again = run_sweep(points, tmp_path, on_point)
    assert [p.digest for p in ran] == [points[0].digest, points[1].digest, points[3].digest]
    assert [r.to_json() for r in again] == [r.to_json() for r in first]
    ran.clear()
    run_sweep(points, tmp_path, on_point)
    assert ran == []
    assert read_result(point_path(tmp_path, points[2]), points[2].digest) is not None
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_run_and_sweep_write_metrics_and_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        'name = "tiny"\nn = 8\nrounds = 4\n[topology]\nname = "ring"\n'
        "[privacy]\nenabled = true\nnoise_multiplier = 2.0\n"
    )
    out = tmp_path / "run"
    assert main(["sim", "run", str(scenario), "--out", str(out), "--set", "training.lr=0.2"]) == 0
    assert (out / "metrics.csv").read_text().count("\n") == 6  # header + rounds 0..4
    for name in ("accuracy.png", "consensus.png", "accuracy_vs_epsilon.png", "result.json"):
        assert (out / name).stat().st_size > 0
    sweep_out = tmp_path / "sweep"
    args = [
        "sim",
        "sweep",
        str(scenario),
        "--set",
        "topology=ring,exponential",
        "--out",
        str(sweep_out),
    ]
    assert main(args) == 0
    assert "2 points run, 0 already stored" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 points run, 2 already stored" in capsys.readouterr().out
    header = (sweep_out / "sweep.csv").read_text().splitlines()[0]
    assert header.startswith("topology,seed,rho,digest,round,accuracy_mean")
    assert "topology=exponential" in (sweep_out / "summary.md").read_text()


def test_cli_reports_bad_input_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "run", str(tmp_path / "nope.toml")]) == 2
    assert "neither a file nor a shipped scenario" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlr = 'fast'\n")
    assert main(["sim", "run", str(bad)]) == 2
    assert "[training] lr must be a number" in capsys.readouterr().err
    assert main(["sim", "list"]) == 0
    assert "topology_study" in capsys.readouterr().out


def test_bench_case_reports_rates_and_rss() -> None:
    from p2pfed.bench.sim import measure_case

    case = measure_case(8, 2, 1, True, repeats=2)
    assert case["n"] == 8
    assert case["vectorized_peer_rounds_s"] > 0 and case["loop_peer_rounds_s"] > 0
    assert case["peak_rss_mb"] > 50
    assert torch.get_num_threads() >= 1


def test_stored_results_round_trip_exactly(tmp_path: Path) -> None:
    from sim.results import RunResult

    plain = run_point(_small(**{"privacy.enabled": False}))
    again = RunResult.from_json(plain.to_json())
    assert again == plain or again.to_json() == plain.to_json()
    assert again.records[-1].epsilon is None
    assert RunResult.from_json(run_point(_small()).to_json()).records[-1].epsilon is not None


def test_real_secure_aggregation_matches_exact_averaging() -> None:
    base = {"algorithm": "fedavg", "n": 8, "rounds": 3, "secagg.enabled": True}
    exact = Simulator(with_overrides(Scenario(), {**base, "dtype": "float64"}))
    exact.run()
    real_scenario = with_overrides(Scenario(), {**base, "dtype": "float64", "secagg.real": True})
    real = Simulator(real_scenario)
    records = real.run()
    # Fixed-point rounding only: below one grid step (16 / 2^22) per coordinate and round.
    assert float((real.theta - exact.theta).abs().max()) < 3 * 16 / 2**22
    assert not torch.equal(real.theta, exact.theta)
    # Real protocol bytes (signed messages, shares, masked vector) exceed the bare vector.
    assert records[-1].bytes_sent_mean > 2 * 7 / 8 * 62 * 4
    assert run_point(real_scenario).to_json() == run_point(real_scenario).to_json()


def test_real_secure_aggregation_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="needs \\[algorithm\\] name = fedavg or fedprox"):
        with_overrides(Scenario(), {"secagg.enabled": True, "secagg.real": True})
    with pytest.raises(ConfigError, match="at most 64 peers"):
        with_overrides(
            Scenario(),
            {"algorithm": "fedavg", "n": 65, "secagg.enabled": True, "secagg.real": True},
        )
    with pytest.raises(ConfigError, match="needs \\[secagg\\] enabled = true"):
        with_overrides(Scenario(), {"algorithm": "fedavg", "secagg.real": True})

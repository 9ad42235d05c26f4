"""Sweeps on a real local Ray cluster (2 CPUs, one per module): same bytes as the thread engine.

Runtime: about 40 s idle, 55-75 s on a 2-core machine under load 10 (cluster start-up and
the workers' torch imports are most of it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pfed.cli import main
from p2pfed.errors import BrokenError
from sim.overrides import with_overrides
from sim.raysweep import INSTALL_HINT, run_sweep_ray
from sim.scenario import Scenario
from sim.specs import load_checked
from sim.sweep import grid_points, parse_set, point_path, run_sweep

SCENARIO = 'name = "tiny"\nn = 4\nrounds = 2\neval_every = 2\n[partition]\nscheme = "dirichlet"\n'
CRASH_ONCE = """
import os
from pathlib import Path
from sim.data import load_dataset
from sim.scenario import DataSpec
import numpy as np

def load():
    marker = Path(__file__).with_suffix(".crashed")
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-point, as on a lost machine
    data = load_dataset(DataSpec(), np.random.default_rng(0))
    return data.train.x, data.train.y, data.test.x, data.test.y
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_sixteen_point_sweep_on_ray_equals_the_thread_engine(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    grid = ["--set", "topology=ring,complete", "--set", "training.lr=0.05,0.2", "--seeds", "4"]
    base = ["sim", "sweep", str(scenario), *grid]
    assert main([*base, "--engine", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert "16 points run, 0 already stored" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "thread")]) == 0
    capsys.readouterr()
    ray_csv = (tmp_path / "ray/sweep.csv").read_text().splitlines()
    thread_csv = (tmp_path / "thread/sweep.csv").read_text().splitlines()
    assert len(ray_csv) == 1 + 16 * 2  # header, then rounds 0 and 2 of every point
    assert sorted(ray_csv) == sorted(thread_csv)
    assert ray_csv == thread_csv  # the gathered table is in point order, not arrival order
    for stored in (tmp_path / "thread/points").iterdir():
        assert (tmp_path / "ray/points" / stored.name).read_bytes() == stored.read_bytes()
    # Resume with the first half lost: stored and fresh results still gather in point order.
    base_scenario = load_checked(scenario)
    points = grid_points(base_scenario, parse_set(grid[1::2][:2]), 4)
    for point in points[:8]:
        point_path(tmp_path / "ray", point).unlink()
    assert main([*base, "--engine", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert "8 points run, 8 already stored" in capsys.readouterr().out
    assert (tmp_path / "ray/sweep.csv").read_text().splitlines() == thread_csv


@pytest.mark.slow
def test_a_point_whose_worker_dies_is_run_again(cluster: Any, tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(CRASH_ONCE)
    base = with_overrides(
        Scenario(), {"n": 4, "rounds": 2, "data.loader": f"{tmp_path / 'crash.py'}:load"}
    )
    points = grid_points(base, parse_set(["training.lr=0.1,0.3"]), 1)
    results = run_sweep_ray(points, tmp_path / "ray")
    assert (tmp_path / "crash.crashed").exists()  # a worker did die
    expected = run_sweep(points, tmp_path / "thread")
    assert [r.to_json() for r in results] == [r.to_json() for r in expected]
    # Without retries the loss is reported in one sentence, and the point is not stored.
    (tmp_path / "crash.crashed").unlink()
    other = grid_points(with_overrides(base, {"seed": 5}), [], 1)
    with pytest.raises(BrokenError, match="was lost"):
        run_sweep_ray(other, tmp_path / "lost", max_retries=0)
    assert not (tmp_path / "lost/points").exists()


def test_engine_ray_without_ray_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    assert main(["sim", "sweep", str(scenario), "--engine", "ray", "--out", str(tmp_path)]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_bench_sweep_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pfed.bench.sweep import measure
    from p2pfed.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match="pip install 'p2pfed\\[ray\\]'"):
        measure(2, 4, 1, 1)


def test_an_unreachable_address_fails_fast_in_one_sentence() -> None:
    import socket

    from p2pfed.errors import ConfigError
    from sim.raysweep import _probe

    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
        _probe(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="must be auto or HOST:PORT"):
        _probe("head-node")

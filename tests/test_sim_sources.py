"""Bring your own data, partition, model and graph; nested --set; up-front validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import topologies
from p2pfed.cli import main
from p2pfed.errors import ConfigError
from sim.engine import Simulator
from sim.overrides import with_overrides
from sim.results import read_result
from sim.scenario import Scenario
from sim.specs import load_checked, preflight
from sim.sweep import grid_points, parse_set, run_point

LOADER = """
import numpy as np
from sklearn.datasets import load_breast_cancer

def load():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    order = np.random.default_rng(7).permutation(len(y))
    train, test = order[:400], order[400:]
    parts = [list(range(i, 400, 4)) for i in range(4)]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test],
            "y_test": y[test], "partition": parts}

def factory(features, classes):
    import torch
    return torch.nn.Sequential(torch.nn.Linear(features, 3), torch.nn.Tanh(),
                               torch.nn.Linear(3, classes))
"""


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gossip(**overrides: object) -> Scenario:
    base: dict[str, object] = {"n": 8, "rounds": 3, "algorithm": "gossip", "topology": "ring"}
    base.update(overrides)
    return with_overrides(Scenario(), base)  # type: ignore[arg-type]


def test_nested_set_reaches_generator_parameters_and_changes_the_graph() -> None:
    base = _gossip(n=24, topology="erdos_renyi")
    points = grid_points(base, parse_set(["topology.params.p=0.2,0.9"]), 1)
    assert [p.scenario.topology.params for p in points] == [(("p", 0.2),), (("p", 0.9),)]
    sparse, dense = (Simulator(p.scenario).topology for p in points)
    assert sparse.union_graph().number_of_edges() < dense.union_graph().number_of_edges()
    with pytest.raises(ConfigError, match="names no scenario key"):
        with_overrides(base, {"topology.params.p.q": 0.1})
    with pytest.raises(ConfigError, match="is no table"):
        with_overrides(base, {"training.lr.x": 0.1})


@pytest.mark.parametrize("fmt", ["graphml", "gml", "edges", "json"])
def test_a_graph_file_in_any_format_runs_exactly_like_the_generator(
    tmp_path: Path, fmt: str
) -> None:
    ring = nx.cycle_graph(8)
    path = tmp_path / f"ring.{fmt}"
    if fmt == "graphml":
        nx.write_graphml(ring, path)
    elif fmt == "gml":
        nx.write_gml(ring, path)
    elif fmt == "edges":
        # Node i is the i-th id to appear, so list the edges in ring order.
        path.write_text("".join(f"{i} {(i + 1) % 8}\n" for i in range(8)))
    else:
        path.write_text(json.dumps(nx.node_link_data(ring, edges="links")))
    from_file = run_point(_gossip(topology=str(path)))
    assert from_file.scenario["topology"]["file"] == str(path)
    assert from_file.records == run_point(_gossip()).records


def test_a_user_graphml_runs_in_a_sweep_next_to_generated_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = nx.star_graph(7)  # hub 0 and 7 leaves: 8 nodes, unlike any swept generator
    nx.write_graphml(graph, tmp_path / "hospitals.graphml")
    (tmp_path / "s.toml").write_text('name = "byo"\nn = 8\nrounds = 3\n')
    monkeypatch.chdir(tmp_path)  # every path below is relative
    args = ["sim", "sweep", "s.toml", "--set", "topology=ring,hospitals.graphml,complete"]
    assert main([*args, "--out", "rel/out"]) == 0
    summary = (tmp_path / "rel/out/summary.md").read_text()
    star = topologies.analyze(topologies.load(tmp_path / "hospitals.graphml")).rho
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[2] for line in summary.splitlines()[2:]}
    assert set(rows) == {"topology=ring", "topology=hospitals.graphml", "topology=complete"}
    assert float(rows["topology=hospitals.graphml"]) == pytest.approx(star, abs=1e-6)
    assert len({rows[k] for k in rows}) == 3
    assert "3 points run" in capsys.readouterr().out
    stored = [read_result(f) for f in (tmp_path / "rel/out/points").iterdir()]
    files = {r.scenario["topology"]["file"] for r in stored if r is not None}
    assert files == {"", str(tmp_path / "hospitals.graphml")}  # absolute: runs from anywhere


def test_loader_partition_factory_and_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "mine.py").write_text(LOADER)
    (tmp_path / "elsewhere").mkdir()
    scenario_file = folder / "s.toml"
    scenario_file.write_text(
        'name = "byo"\nn = 4\nrounds = 2\n[algorithm]\nname = "fedavg"\n'
        '[data]\nloader = "mine.py:load"\n[model]\nfactory = "mine.py:factory"\n'
    )
    scenario = load_checked(scenario_file)
    assert scenario.data.loader == f"{folder / 'mine.py'}:load"
    sim = Simulator(scenario)
    assert sim.partition.counts.tolist() == [100, 100, 100, 100]
    assert sim.indices[1, :3].tolist() == [1, 5, 9]
    assert sim.model.size == 30 * 3 + 3 + 3 * 2 + 2
    # The factory's own initialisation, seeded by the scenario: nn.Linear's uniform bound.
    first = sim.theta[0, : 30 * 3]
    assert 0 < float(first.abs().max()) <= 1 / np.sqrt(30)
    assert torch.equal(Simulator(scenario).theta, sim.theta)
    assert not torch.equal(Simulator(with_overrides(scenario, {"seed": 1})).theta, sim.theta)
    # A partition file wins over the loader's partition.
    (folder / "split.json").write_text(json.dumps([[0, 1], [2], [], list(range(3, 50))]))
    (folder / "s2.toml").write_text(
        scenario_file.read_text() + '[partition]\nfile = "split.json"\n'
    )
    split = Simulator(load_checked(folder / "s2.toml"))
    assert split.partition.counts.tolist() == [2, 1, 0, 47]
    assert run_point(load_checked(folder / "s2.toml")).records[-1].round == 2


def test_every_bad_key_is_reported_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("n = 0\n[training]\nlr = 'fast'\nbatch_size = 0\n[topology]\nmixing = 'best'\n")
    with pytest.raises(ConfigError) as caught:
        load_checked(bad)
    lines = str(caught.value).splitlines()
    assert lines[0] == "bad.toml has 4 problems:"
    assert any("[training] batch_size must be >= 1" in line for line in lines)
    assert any("n must be >= 1" in line for line in lines)
    assert any("[training] lr must be a number" in line for line in lines)
    assert any("[topology] mixing must be one of" in line for line in lines)
    # Sweep points: a mistyped generator and a wrong-size graph stop the sweep up front.
    nx.write_graphml(nx.cycle_graph(5), tmp_path / "five.graphml")
    good = tmp_path / "good.toml"
    good.write_text('name = "g"\nn = 8\nrounds = 2\n')
    out = tmp_path / "out"
    args = ["sim", "sweep", str(good), "--out", str(out)]
    code = main([*args, "--set", f"topology=ring,rign,{tmp_path / 'five.graphml'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown topology 'rign'" in err and "has 5 nodes but n = 8" in err
    assert "Traceback" not in err
    assert not out.exists() or not (out / "points").exists()  # nothing ran
    with pytest.raises(ConfigError, match=r"\[data\] loader: cannot import 'no_such_module'"):
        preflight([with_overrides(Scenario(), {"data.loader": "no_such_module:load"})])
    with pytest.raises(ConfigError, match=r"\[partition\] file: .* has 2 peers, n = 16"):
        (tmp_path / "p.json").write_text("[[0], [1]]")
        preflight([with_overrides(Scenario(), {"partition.file": str(tmp_path / "p.json")})])


def test_bad_user_code_and_files_fail_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def three():\n    return 1, 2, 3\n")
    scenario = with_overrides(Scenario(), {"data.loader": f"{tmp_path / 'm.py'}:three"})
    with pytest.raises(ConfigError, match="must return"):
        Simulator(scenario)
    with pytest.raises(ConfigError, match="has no function 'four'"):
        preflight([with_overrides(Scenario(), {"data.loader": f"{tmp_path / 'm.py'}:four"})])
    with pytest.raises(ConfigError, match="module:function"):
        with_overrides(Scenario(), {"model.factory": "no colon"})
    with pytest.raises(ConfigError, match="cannot be combined with"):
        with_overrides(
            _gossip(topology="erdos_renyi"), {"topology.params.p": 0.5, "topology": "x.gml"}
        )


def test_demo_dir_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from p2pfed.cli.commands.demo import _root

    monkeypatch.chdir(tmp_path)
    assert _root(argparse.Namespace(dir="rel/demo")) == tmp_path / "rel" / "demo"


def test_the_documented_example_sweeps_its_own_graph_beside_a_generated_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(__file__).resolve().parent.parent / "docs/examples/bring_your_own"
    args = ["sim", "sweep", str(folder / "study.toml"), "--out", str(tmp_path)]
    graph = str(folder / "hospitals.graphml")
    assert main([*args, "--set", f"topology=ring,{graph}", "--seeds", "2"]) == 0
    assert "4 points run" in capsys.readouterr().out
    rows = (tmp_path / "summary.md").read_text().splitlines()[2:]
    assert len(rows) == 2
    assert all(float(row.split(" | ")[3]) > 0.85 for row in rows)  # the MLP learned


def test_set_seed_starts_each_run_of_seeds() -> None:
    points = grid_points(_gossip(), parse_set(["seed=3,7"]), 2)
    assert [p.scenario.seed for p in points] == [3, 4, 7, 8]
    assert len({p.digest for p in points}) == 4
    with pytest.raises(ConfigError, match="--set seed values must be integers"):
        grid_points(_gossip(), parse_set(["seed=x"]), 1)

"""Scenario parsing, partitions, data sets, the cost model and privacy accounting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError
from p2pfed.training.data import load_builtin, load_raw
from sim.cost import round_cost
from sim.data import load_dataset
from sim.overrides import with_overrides
from sim.partition import label_histogram, partition
from sim.privacy import epsilon
from sim.scenario import (
    DataSpec,
    NetworkSpec,
    PartitionSpec,
    Scenario,
    SecAggSpec,
    load_scenario,
    scenario_from_dict,
)

SHIPPED = sorted((Path(__file__).parent.parent / "sim" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_parse(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_shipped_scenarios_exist() -> None:
    assert {p.stem for p in SHIPPED} >= {"quickstart", "topology_study"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rounds": 5, "roundz": 3}, "scenario key roundz is not a known setting"),
        ({"data": {"nmae": "digits"}}, r"scenario key \[data\] nmae is not a known setting"),
        ({"n": "many"}, "scenario key n must be an integer"),
        ({"n": 0}, "scenario key n must be >= 1"),
        ({"training": {"lr": -1}}, r"\[training\] lr must be >= 0"),
        ({"training": {"lr": True}}, r"\[training\] lr must be a number"),
        ({"partition": {"scheme": "zipf"}}, r"\[partition\] scheme must be one of"),
        ({"algorithm": {"name": "sgd"}}, r"\[algorithm\] name must be one of"),
        ({"topology": {"mixing": "magic"}}, r"\[topology\] mixing must be one of"),
        ({"faults": {"dropout": 1.0}}, r"\[faults\] dropout must be in \[0, 1\)"),
        ({"faults": {"byzantine": 16}}, r"\[faults\] byzantine must be smaller than n = 16"),
        ({"privacy": {"enabled": "yes"}}, r"\[privacy\] enabled must be true or false"),
        ({"data": 3}, r"scenario key data must be a table"),
        ({"topology": {"params": {"p": [1]}}}, r"\[topology\] params.p must be a number"),
        ({"topology": {"params": 3}}, r"\[topology\] params must be a table of parameters"),
        ({"privacy": {"delta": 1.0}}, r"\[privacy\] delta must be in \(0, 1\), not 1.0"),
        ({"privacy": {"accountant": "moments"}}, r"\[privacy\] accountant must be one of pld, rdp"),
        (
            {"privacy": {"enabled": True}, "algorithm": {"name": "gradient_tracking"}},
            "cannot be combined",
        ),
    ],
)
def test_bad_scenarios_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario_from_dict(raw)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("n = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")


def test_unknown_dataset_and_topology_are_reported() -> None:
    with pytest.raises(ConfigError, match="is not a data set"):
        load_dataset(DataSpec(name="mnist"), np.random.default_rng(0))
    from sim.engine import Simulator

    scenario = with_overrides(Scenario(), {"topology": "moebius"})
    with pytest.raises(ConfigError, match="unknown topology 'moebius'"):
        Simulator(scenario)


def test_overrides_by_path_and_table_name() -> None:
    scenario = with_overrides(Scenario(), {"topology": "torus", "n": 64, "training.lr": 0.5})
    assert scenario.topology.name == "torus" and scenario.n == 64
    assert scenario.training.lr == 0.5
    with pytest.raises(ConfigError, match="names no scenario key"):
        with_overrides(Scenario(), {"training.speed": 1})
    assert scenario.digest() != Scenario().digest()
    assert scenario.digest() == with_overrides(scenario, {}).digest()


@pytest.mark.parametrize("name", ["breast_cancer", "digits", "diabetes", "synthetic"])
def test_datasets_are_standardised_and_split(name: str) -> None:
    data = load_dataset(DataSpec(name=name, samples=300), np.random.default_rng(1))
    assert len(data.train) > len(data.test) > 0
    assert np.allclose(data.train.x.mean(0), 0.0, atol=1e-9)
    assert set(np.unique(data.train.y)) == set(range(data.classes))
    if name == "diabetes":
        # Binarised at the training median: the two classes are near-balanced.
        assert abs(data.train.y.mean() - 0.5) < 0.02


@settings(max_examples=30, deadline=None)
@given(
    scheme=st.sampled_from(["iid", "dirichlet", "classes", "quantity"]),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_partitions_deal_each_sample_exactly_once(scheme: str, n: int, seed: int) -> None:
    y = np.random.default_rng(seed).integers(0, 4, size=200)
    y[:4] = np.arange(4)
    spec = PartitionSpec(scheme=scheme, alpha=0.3, classes_per_peer=2)
    part = partition(spec, y, n, np.random.default_rng(seed))
    dealt = np.sort(np.concatenate([part.indices[i, : part.counts[i]] for i in range(n)]))
    if scheme == "classes" and n * 2 < 4:
        # Fewer class slots than classes: the unheld classes stay undealt.
        assert len(np.unique(dealt)) == len(dealt) < 200
    else:
        assert np.array_equal(dealt, np.arange(200))
    if scheme == "classes":
        hist = label_histogram(part, y, 4)
        assert ((hist > 0).sum(1) <= 2).all()


def test_drawn_partitions_scale_past_the_data_set() -> None:
    y = np.repeat(np.arange(2), 100)
    spec = PartitionSpec(scheme="dirichlet", alpha=0.1, samples_per_peer=8)
    part = partition(spec, y, 5000, np.random.default_rng(0))
    assert part.n == 5000 and (part.counts == 8).all()
    hist = label_histogram(part, y, 2)
    # α = 0.1: most peers hold (almost) one class only.
    assert (hist.max(1) >= 7).mean() > 0.7


def test_partition_rejects_more_classes_than_exist() -> None:
    with pytest.raises(ConfigError, match="classes_per_peer = 3 exceeds the 2 classes"):
        partition(
            PartitionSpec(scheme="classes", classes_per_peer=3),
            np.array([0, 1]),
            2,
            np.random.default_rng(0),
        )


def test_epsilon_grows_with_rounds_and_respects_the_classical_bound() -> None:
    sigma, delta = 2.0, 1e-5
    values = [epsilon(sigma, t, delta) for t in (1, 10, 100)]
    assert 0 < values[0] < values[1] < values[2]
    # Gaussian RDP is α/(2σ²) per release; the classical conversion is an upper bound.
    classical = min(
        100 * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1)
        for a in np.linspace(1.01, 200, 5000)
    )
    assert values[2] <= classical
    assert epsilon(sigma, 0, delta) == 0.0
    assert epsilon(sigma, 100, delta, "pld") < values[2]


def test_cost_model_ring_allreduce_and_secagg() -> None:
    active = np.ones(8, dtype=np.bool_)
    zeros = np.zeros(8, dtype=np.int64)
    net = NetworkSpec(bandwidth_mbps=8.0, latency_ms=0.0, bytes_per_param=4)
    ring = round_cost(1000, zeros, zeros, active, True, 1, net, SecAggSpec())
    assert np.allclose(ring.bytes_sent, 2 * 7 / 8 * 4000)
    assert math.isclose(ring.time_s, 2 * 7 / 8 * 4000 / 1e6)
    sends = np.full(8, 2, dtype=np.int64)
    plain = round_cost(1000, sends, sends + 1, active, False, 1, net, SecAggSpec())
    masked = round_cost(1000, sends, sends + 1, active, False, 1, net, SecAggSpec(enabled=True))
    assert np.allclose(plain.bytes_sent, 8000)
    assert np.allclose(masked.bytes_sent, 8000 + 2 * (2 * 32 + 3 * 49))
    assert masked.time_s > plain.time_s


def test_epsilon_agrees_with_dp_accounting_rdp() -> None:
    import dp_accounting
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.5), 40))
    assert math.isclose(epsilon(1.5, 40, 1e-5, "rdp"), acc.get_epsilon(1e-5), rel_tol=1e-3)


def test_simulator_and_daemon_read_the_same_bundled_rows() -> None:
    raw = load_raw("breast_cancer")
    daemon = load_builtin("breast_cancer")
    assert np.array_equal(daemon.x, raw.x.astype(np.float32))
    assert np.array_equal(daemon.y, raw.target)
    split = load_dataset(DataSpec(name="breast_cancer"), np.random.default_rng(0))
    assert split.train.feature_names == daemon.feature_names
    labels = np.concatenate([split.train.y, split.test.y])
    assert sorted(labels.tolist()) == sorted(daemon.y.tolist())
    # Diabetes: the daemon cuts at the median of all targets, the simulator at the training
    # part's only (test data never shapes preprocessing); both see the same real targets.
    diabetes = load_raw("diabetes")
    assert diabetes.regression
    cut = np.median(diabetes.target)
    assert np.array_equal(load_builtin("diabetes").y, diabetes.target > cut)

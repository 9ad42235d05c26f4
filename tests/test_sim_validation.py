"""Validation of the simulator against theory and against plain per-peer implementations."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from sim.engine import Simulator, run_scenario
from sim.mixing import with_faults
from sim.overrides import with_overrides
from sim.reference import fedavg_full_batch
from sim.scenario import Scenario


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Tiny tensors: a second intra-op thread only contends on the shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mixing_only(topology: str, n: int, rounds: int) -> Scenario:
    return with_overrides(
        Scenario(),
        {
            "algorithm": "gossip",
            "topology": topology,
            "n": n,
            "rounds": rounds,
            "training.local_steps": 0,
            "model.init": "independent",
            "model.init_scale": 1.0,
            "dtype": "float64",
        },
    )


@pytest.mark.parametrize(
    ("topology", "n", "t1", "t2"), [("ring", 16, 40, 80), ("torus", 64, 30, 60)]
)
def test_consensus_decays_at_the_predicted_rate(topology: str, n: int, t1: int, t2: int) -> None:
    # Starting from random vectors, after the transients the disagreement shrinks by |λ2|
    # per round: compare the measured asymptotic rate with topologies' ρ (on the log scale,
    # i.e. the per-round decay exponent, within 5 %).
    records = run_scenario(_mixing_only(topology, n, t2))
    dist = [r.consensus_distance for r in records]
    assert dist[0] > 1.0
    measured = math.log(dist[t2] / dist[t1]) / (t2 - t1)
    rho = topologies.analyze(topologies.build(topology, n)).rho
    predicted = math.log(rho)
    assert abs(measured - predicted) <= 0.05 * abs(predicted), (measured, predicted)
    # The average is preserved by a doubly stochastic W.
    assert records[-1].consensus_distance < records[0].consensus_distance


def test_exact_averaging_equals_centralized_fedavg_on_iid_data() -> None:
    scenario = with_overrides(
        Scenario(),
        {
            "algorithm": "fedavg",
            "n": 8,
            "rounds": 10,
            "dtype": "float64",
            "partition.scheme": "iid",
            "training.batch_size": 10_000,
            "training.local_steps": 3,
            "training.lr": 0.5,
        },
    )
    sim = Simulator(scenario)
    sim.run()
    peers = [sim.indices[i, : sim.counts[i]] for i in range(scenario.n)]
    reference = fedavg_full_batch(sim.x_train, sim.y_train, peers, 2, 10, 3, 0.5)
    assert torch.all(sim.theta == sim.theta[0])
    assert float((sim.theta[0] - reference).abs().max()) <= 1e-6
    assert float(reference.abs().max()) > 0.1  # it did train


def _accuracy(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    features = x.shape[1]
    w = theta[: 2 * features].view(2, features)
    logits = x @ w.T + theta[2 * features :]
    return float((logits.argmax(1) == y).double().mean())


def test_dpsgd_on_exponential_graph_reaches_centralized_accuracy() -> None:
    scenario = with_overrides(
        Scenario(),
        {
            "algorithm": "gossip",
            "topology": "exponential",
            "n": 16,
            "rounds": 60,
            "eval_every": 60,
            "dtype": "float64",
            "partition.scheme": "iid",
            "training.local_steps": 2,
            "training.batch_size": 16,
            "training.lr": 0.1,
        },
    )
    sim = Simulator(scenario)
    records = sim.run()
    everyone = [torch.arange(sim.x_train.shape[0])]
    central = fedavg_full_batch(sim.x_train, sim.y_train, everyone, 2, 1, 300, 0.5)
    central_acc = _accuracy(central, sim.x_test, sim.y_test)
    assert central_acc > 0.93
    assert records[-1].accuracy_mean >= central_acc - 0.02, (records[-1], central_acc)
    assert records[-1].accuracy_min >= central_acc - 0.02


def test_faults_keep_a_symmetric_mixing_matrix_doubly_stochastic() -> None:
    w = topologies.build("torus", 36).mixing_at(0)
    rng = np.random.default_rng(3)
    active = rng.random(36) > 0.3
    faulty = with_faults(sp.csr_array(w), active, 0.4, rng)
    dense = faulty.toarray()
    assert np.allclose(dense.sum(0), 1.0) and np.allclose(dense.sum(1), 1.0)
    assert np.allclose(dense, dense.T)
    for i in np.flatnonzero(~active):
        assert dense[i, i] == 1.0
    assert (dense != 0).sum() < (w.toarray() != 0).sum()


def test_mixing_preserves_the_average_under_dropout_and_link_failures() -> None:
    scenario = with_overrides(
        _mixing_only("torus", 16, 20), {"faults.dropout": 0.3, "faults.link_failure": 0.2}
    )
    sim = Simulator(scenario)
    before = sim.theta.mean(0).clone()
    sim.run()
    assert torch.allclose(sim.theta.mean(0), before, atol=1e-12)


def test_gradient_tracking_beats_dpsgd_consensus_on_skewed_data() -> None:
    base = {
        "topology": "ring",
        "n": 16,
        "rounds": 60,
        "eval_every": 60,
        "partition.scheme": "classes",
        "partition.classes_per_peer": 1,
        "training.local_steps": 5,
        "training.lr": 0.05,
        "dtype": "float64",
    }
    gossip = run_scenario(with_overrides(Scenario(), {**base, "algorithm": "gossip"}))
    tracking = run_scenario(with_overrides(Scenario(), {**base, "algorithm": "gradient_tracking"}))
    # Drift correction: peers that hold one class each drift apart under D-PSGD; the tracker
    # pulls their local steps toward the network-average gradient.
    assert tracking[-1].consensus_distance < 0.5 * gossip[-1].consensus_distance
    assert tracking[-1].accuracy_min >= gossip[-1].accuracy_min


def test_one_peer_exponential_schedule_averages_exactly_in_log2_n_rounds() -> None:
    # Time-varying mixing (topo.mixing_at(t)): the product of log2(n) rounds is 11ᵀ/n.
    records = run_scenario(_mixing_only("one_peer_exponential", 32, 5))
    assert records[4].consensus_distance > 1e-3
    assert records[5].consensus_distance < 1e-12


@settings(max_examples=25, deadline=None)
@given(
    topology=st.sampled_from(["ring", "torus", "exponential", "one_peer_exponential"]),
    seed=st.integers(0, 2**32 - 1),
    dropout=st.floats(0.0, 0.9),
    link=st.floats(0.0, 0.9),
)
def test_faulty_mixing_stays_row_stochastic(
    topology: str, seed: int, dropout: float, link: float
) -> None:
    topo = topologies.build(topology, 16)
    rng = np.random.default_rng(seed)
    active = rng.random(16) >= dropout
    for t in range(topo.period):
        dense = with_faults(sp.csr_array(topo.mixing_at(t)), active, link, rng).toarray()
        assert np.allclose(dense.sum(1), 1.0)
        assert (dense >= 0).all()
        off = dense - np.diag(np.diag(dense))
        assert not off[~active].any() and not off[:, ~active].any()

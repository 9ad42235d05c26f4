import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies as T
from topologies import TopologyError


def ring_gap(n: int) -> float:
    return (2 / 3) * (1 - math.cos(2 * math.pi / n))


@pytest.mark.parametrize("n", [16, 64, 100])
def test_ring_gap_closed_form(n: int) -> None:
    assert T.analyze(T.build("ring", n)).spectral_gap == pytest.approx(ring_gap(n), abs=1e-9)


def test_ring_gap_sparse_path_matches_closed_form() -> None:
    # Above DENSE_LIMIT the spectrum comes from ARPACK; it must agree with the closed form too.
    n = T.analysis.DENSE_LIMIT + 76
    assert T.analyze(T.build("ring", n)).spectral_gap == pytest.approx(ring_gap(n), rel=1e-6)


@pytest.mark.parametrize(
    ("n", "gap"), [(16, 0.40), (64, (2 / 5) * (1 - math.cos(2 * math.pi / 8)))]
)
def test_torus_gap_closed_form(n: int, gap: float) -> None:
    assert T.analyze(T.build("torus", n)).spectral_gap == pytest.approx(gap, abs=1e-9)


@pytest.mark.parametrize("n", [16, 64, 256, 2048])
def test_exponential_gap_closed_form(n: int) -> None:
    gap = 2 / (1 + math.log2(n))
    assert T.analyze(T.build("exponential", n)).spectral_gap == pytest.approx(gap, abs=1e-9)


def test_hypercube_gap() -> None:
    assert T.analyze(T.build("hypercube", 64)).spectral_gap == pytest.approx(2 / 7, abs=1e-9)


@pytest.mark.parametrize("n", [8, 16, 64])
def test_one_peer_exponential_averages_exactly_after_log2_n_rounds(n: int) -> None:
    topo = T.build("one_peer_exponential", n)
    assert topo.period == int(math.log2(n))
    x = np.random.default_rng(1).standard_normal(n)
    y = x.copy()
    for t in range(topo.period):
        y = topo.mixing_at(t) @ y
    np.testing.assert_allclose(y, np.full(n, x.mean()), atol=1e-12)
    a = T.analyze(topo)
    assert a.rho_period < 1e-12
    assert a.rounds_to(1e-3) == topo.period


def test_one_peer_exponential_not_exact_for_other_n() -> None:
    a = T.analyze(T.build("one_peer_exponential", 12))
    assert 0.0 < a.rho_period < 1.0


def test_complete_graph_averages_in_one_round() -> None:
    a = T.analyze(T.build("complete", 10))
    assert a.rho == pytest.approx(0.0, abs=1e-12)
    assert a.rounds_to(1e-3) == 1


def test_consensus_decays_at_predicted_rate() -> None:
    topo = T.build("torus", 36)
    a = T.analyze(topo)
    x = np.random.default_rng(0).standard_normal(36)
    w = topo.mixing_at(0)
    errs = []
    for _ in range(60):
        x = w @ x
        errs.append(np.linalg.norm(x - x.mean()))
    rate = (errs[-1] / errs[-21]) ** (1 / 20)
    assert rate == pytest.approx(a.rho, rel=0.02)


def test_rounds_to_consensus_formula() -> None:
    assert T.rounds_to_consensus(0.5, 1, 1e-3) == 10  # 0.5^10 < 1e-3 < 0.5^9
    assert T.rounds_to_consensus(0.0, 4, 1e-3) == 4
    with pytest.raises(ValueError):
        T.rounds_to_consensus(0.5, 1, 2.0)


def test_analysis_fields_and_traffic() -> None:
    a = T.analyze(T.build("exponential", 64), model_bytes=1000).to_dict()
    for key in ["name", "n", "spectral_gap", "rho", "rounds_to_1e-3", "degree_max", "diameter"]:
        assert key in a
    assert a["messages_per_node_round"] == 6
    assert a["bytes_per_node_round"] == 6000
    assert a["diameter"] == 6


def test_neighbors_follow_mixing_rows() -> None:
    topo = T.build("ring", 8)
    assert topo.neighbors_at(0, 0) == (1, 7)
    opx = T.build("one_peer_exponential", 8)
    assert opx.neighbors_at(0, 0) == (1,)
    assert opx.neighbors_at(1, 0) == (2,)
    assert opx.neighbors_at(3, 0) == (1,)  # period 3 wraps around


GENERATED = [
    ("ring", lambda n: n >= 3),
    ("torus", lambda n: any(n % r == 0 and n // r >= 3 for r in range(3, math.isqrt(n) + 1))),
    ("grid", lambda n: n >= 2),
    ("complete", lambda n: n >= 2),
    ("star", lambda n: n >= 2),
    ("hypercube", lambda n: n & (n - 1) == 0),
    ("exponential", lambda n: n >= 2),
    ("one_peer_exponential", lambda n: n >= 2),
    ("erdos_renyi", lambda n: n >= 2),
    ("regular", lambda n: n >= 5),
    ("small_world", lambda n: n >= 5),
    ("regions", lambda n: n >= 2),
]


def assert_valid_mixing(topo: T.Topology) -> None:
    for t in range(topo.period):
        w = sp.csr_array(topo.mixing_at(t)).toarray()
        g = topo.graph_at(t)
        assert (w >= 0).all()
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-9)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
        for i, j in zip(*np.nonzero(w), strict=True):
            if i != j:
                assert g.has_edge(j, i) if g.is_directed() else g.has_edge(i, j)


@settings(max_examples=60, deadline=None)
@given(
    idx=st.integers(0, len(GENERATED) - 1),
    n=st.integers(2, 70),
    seed=st.integers(0, 2**31),
    rule=st.sampled_from(["auto", "metropolis", "max_degree"]),
    beta=st.none() | st.floats(0.0, 0.9),
)
def test_every_generator_gives_valid_mixing(
    idx: int, n: int, seed: int, rule: str, beta: float | None
) -> None:
    name, ok = GENERATED[idx]
    if not ok(n):
        with pytest.raises(TopologyError):
            T.build(name, n, seed=seed)
        return
    topo = T.build(name, n, seed=seed)
    assert topo.n == n
    assert_valid_mixing(topo)
    if not topo.directed:
        assert_valid_mixing(topo.with_mixing(rule, beta))
    elif beta is not None:
        assert_valid_mixing(topo.with_mixing("auto", beta))


@pytest.mark.parametrize("name", ["erdos_renyi", "regular", "small_world", "regions"])
def test_random_generators_are_seeded(name: str) -> None:
    a = T.build(name, 40, seed=7).graph_at(0)
    b = T.build(name, 40, seed=7).graph_at(0)
    c = T.build(name, 40, seed=8).graph_at(0)
    assert sorted(a.edges()) == sorted(b.edges())
    assert sorted(a.edges()) != sorted(c.edges())


def test_regions_structure() -> None:
    g = T.build("regions", 24, regions=3, bridges=2).graph_at(0)
    # Three complete blocks of 8 (28 edges each) plus at most 2 bridges per region pair.
    assert 3 * 28 < g.number_of_edges() <= 3 * 28 + 3 * 2


def test_uniform_needs_regular_graph() -> None:
    with pytest.raises(TopologyError, match="regular"):
        T.build("star", 5, mixing="uniform")


def test_unknown_names_and_params() -> None:
    with pytest.raises(TopologyError, match="unknown topology"):
        T.build("moebius", 8)
    with pytest.raises(TopologyError, match="no parameter 'degre'"):
        T.build("regular", 8, degre=3)
    with pytest.raises(TopologyError, match="unknown mixing rule"):
        T.build("ring", 8, mixing="magic")


def test_validate_mixing_rejects_bad_matrices() -> None:
    g = nx.path_graph(3)
    with pytest.raises(TopologyError, match="negative"):
        T.validate_mixing(sp.csr_array(np.array([[1.5, -0.5, 0], [-0.5, 1.5, 0], [0, 0, 1.0]])))
    with pytest.raises(TopologyError, match="row 0"):
        T.validate_mixing(sp.csr_array(np.array([[0.5, 0, 0], [0, 1, 0], [0.5, 0, 1.0]])))
    w = np.full((3, 3), 1 / 3)
    with pytest.raises(TopologyError, match="not an edge"):
        T.validate_mixing(sp.csr_array(w), g)


@pytest.mark.slow
def test_large_erdos_renyi_is_analysed() -> None:
    a = T.analyze(T.build("erdos_renyi", 4096))
    assert 0.0 < a.spectral_gap < 1.0
    assert a.diameter >= 3

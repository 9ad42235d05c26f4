import networkx as nx
import numpy as np
import pytest

from p2pfed.errors import ConfigError, DataError, LocalProtocolError
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.harness import make_identities, run_cohort
from p2pfed.secagg.messages import MessageKind, ShareKind
from p2pfed.secagg.params import SecAggConfig, default_degree, plan_cohort
from p2pfed.secagg.protocol import SecAggPeer
from p2pfed.secagg.recovery import plan_reveal
from p2pfed.secagg.state import TRANSITIONS, Event, Stage, mermaid, next_stage


def names(n):
    return [f"peer-{i:03d}" for i in range(n)]


def plain_sum(inputs, who, dtype=np.uint32):
    total = np.zeros_like(next(iter(inputs.values())), dtype=np.uint64)
    for p in who:
        total += inputs[p].astype(np.uint64)
    return total.astype(dtype) if dtype == np.uint32 else total


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "d", "graph"),
    [
        (3, 1_000_000, "complete"),
        (5, 20_000, "complete"),
        (16, 5_000, "complete"),
        (64, 1_000, "harary"),
    ],
)
def test_unmasked_sum_equals_plain_sum_of_quantised_inputs(n, d, graph):
    fp = FixedPoint(clip=4.0, level_bits=20)
    rng = np.random.default_rng(n)
    floats = {p: rng.normal(0, 2, d) for p in names(n)}
    inputs = {p: fp.encode(x, rng, peers=n) for p, x in floats.items()}
    config = SecAggConfig("hospitals", 7, d)
    run = run_cohort(config, inputs, random_seed=n)
    assert run.survivors == set(names(n))
    assert set(run.results) == set(names(n))
    assert all(peer.plan.graph == graph for peer in run.peers.values())
    expected = plain_sum(inputs, names(n))
    for result in run.results.values():
        assert result.dtype == np.uint32
        assert np.array_equal(result, expected)
    decoded = fp.decode_sum(expected, n)
    clipped = sum(np.clip(x, -4, 4) for x in floats.values())
    assert np.max(np.abs(decoded - clipped)) <= n * fp.step


def test_64_bit_ring():
    d, n = 3000, 5
    rng = np.random.default_rng(3)
    inputs = {p: rng.integers(0, 2**40, d, dtype=np.uint64) for p in names(n)}
    run = run_cohort(SecAggConfig("c", 1, d, ring_bits=64), inputs, random_seed=3)
    expected = plain_sum(inputs, names(n), np.uint64)
    assert len(run.results) == n
    assert all(np.array_equal(r, expected) for r in run.results.values())


def test_masked_vector_differs_from_input_and_is_not_the_sum():
    d = 1000
    inputs = {p: np.full(d, 5, dtype=np.uint32) for p in names(4)}
    seen = {}

    class Capture:
        def sum(self, vectors, ring_bits):
            from p2pfed.secagg.summation import DirectMaskedSum

            seen.update({k: v.copy() for k, v in vectors.items()})
            return DirectMaskedSum().sum(vectors, ring_bits)

    run_cohort(SecAggConfig("c", 1, d), inputs, masked_sum=Capture(), random_seed=1)
    for vector in seen.values():
        assert np.mean(vector == 5) < 0.01


def test_harary_plan_is_regular_symmetric_connected_and_shared():
    config = SecAggConfig("c", 4, 10)
    cohort = frozenset(names(128))
    plan = plan_cohort(config, cohort)
    assert plan.graph == "harary"
    assert plan.degree == default_degree(128) == 14
    graph = nx.Graph()
    for p, nbrs in plan.neighbours.items():
        assert len(nbrs) == 14 and p not in nbrs
        for q in nbrs:
            assert p in plan.neighbours[q]
            graph.add_edge(p, q)
    assert nx.is_connected(graph)
    assert plan.threshold == 8 and plan.threshold > (plan.degree + 1) / 2
    assert plan_cohort(config, frozenset(reversed(names(128)))) == plan
    other_round = plan_cohort(SecAggConfig("c", 5, 10), cohort)
    assert other_round.neighbours != plan.neighbours
    assert plan_cohort(config, frozenset(names(16))).graph == "complete"
    assert (
        plan_cohort(SecAggConfig("c", 4, 10, graph="harary", degree=4), frozenset(names(16))).degree
        == 4
    )


def test_default_thresholds_are_strict_majorities():
    for n in range(3, 17):
        plan = plan_cohort(SecAggConfig("c", 1, 1), frozenset(names(n)))
        assert plan.threshold > n / 2 and plan.threshold == n // 2 + 1


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="cohort"):
        plan_cohort(SecAggConfig("c", 1, 1), frozenset(names(2)))
    with pytest.raises(ConfigError, match="threshold"):
        plan_cohort(SecAggConfig("c", 1, 1, threshold=6), frozenset(names(5)))
    with pytest.raises(ConfigError, match="degree"):
        SecAggConfig("c", 1, 1, degree=3)
    with pytest.raises(ConfigError, match="dimension"):
        SecAggConfig("c", 1, 0)
    with pytest.raises(ConfigError, match="consortium"):
        SecAggConfig("", 1, 1)
    with pytest.raises(ConfigError, match="ring"):
        SecAggConfig("c", 1, 1, ring_bits=16)


def test_state_table_and_diagram():
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    for (stage, _event), target in TRANSITIONS.items():
        assert f"{stage.value} --> {target.value}" in diagram
    with pytest.raises(LocalProtocolError):
        next_stage(Stage.DONE, Event.START)
    with pytest.raises(LocalProtocolError):
        next_stage(Stage.ADVERTISE, Event.SUM_RECEIVED)


def test_reveal_plan_refuses_both_secrets_of_one_peer():
    assert plan_reveal(["a", "b", "c"], frozenset({"a"}), frozenset({"b"})) == {
        "a": ShareKind.SELF_SEED,
        "b": ShareKind.PAIR_SECRET,
    }
    with pytest.raises(LocalProtocolError, match="both"):
        plan_reveal(["a"], frozenset({"a"}), frozenset({"a"}))


def test_a_second_sum_is_refused_and_inputs_are_checked():
    n, d = 4, 16
    inputs = {p: np.ones(d, dtype=np.uint32) for p in names(n)}
    run = run_cohort(SecAggConfig("c", 1, d), inputs, random_seed=2)
    peer = run.peers[names(n)[0]]
    assert peer.stage is Stage.DONE
    with pytest.raises(LocalProtocolError, match="once"):
        peer.receive_sum(np.zeros(d, np.uint32), names(n)[:3])
    signers, ids = make_identities(names(n))
    fresh = SecAggPeer(SecAggConfig("c", 1, d), names(n)[0], signers[names(n)[0]], ids)
    with pytest.raises(DataError, match="uint32"):
        fresh.start(np.ones(d, dtype=np.int64))
    with pytest.raises(LocalProtocolError):
        fresh.result()
    with pytest.raises(ConfigError, match="signer"):
        SecAggPeer(SecAggConfig("c", 1, d), names(n)[0], signers[names(n)[1]], ids)


def test_reveals_never_carry_both_secrets_of_a_peer():
    from p2pfed.secagg.harness import Drop
    from p2pfed.secagg.messages import decode

    revealed: dict[str, set] = {}

    def spy(sender, recipient, data):
        message = decode(data)
        if message.round == 1 and data[3] == MessageKind.REVEAL:
            for share in message.shares:
                revealed.setdefault(share.dealer, set()).add(share.kind)
        return data

    n, d = 7, 50
    inputs = {p: np.ones(d, dtype=np.uint32) for p in names(n)}
    drops = {names(n)[1]: Drop(Stage.MASKED_INPUT), names(n)[4]: Drop(Stage.UNMASK)}
    run = run_cohort(SecAggConfig("c", 1, d), inputs, drops=drops, random_seed=5, tamper=spy)
    assert run.survivors == set(names(n)) - {names(n)[1]}
    assert revealed[names(n)[1]] == {ShareKind.PAIR_SECRET}
    assert revealed[names(n)[0]] == {ShareKind.SELF_SEED}
    assert all(len(kinds) == 1 for kinds in revealed.values())


def test_the_documented_diagram_is_generated_from_the_table():
    from pathlib import Path

    from p2pfed.secagg.state import accepts_table

    doc = (Path(__file__).parent.parent / "docs" / "secure-aggregation.md").read_text()
    assert "```mermaid\n" + mermaid() + "```" in doc
    assert accepts_table() in doc


def test_no_coalition_below_threshold_rebuilds_a_peers_secrets():
    import itertools

    from p2pfed.secagg import shamir
    from p2pfed.secagg.primitives import AgreementKeyPair

    n, d = 6, 8
    inputs = {p: np.ones(d, dtype=np.uint32) for p in names(n)}
    run = run_cohort(SecAggConfig("c", 1, d), inputs, random_seed=8)
    dealer = run.peers[names(n)[0]]
    t = dealer.plan.threshold
    assert t == 4
    for size in range(1, n):
        for coalition in itertools.combinations(names(n)[1:], size):
            held = {dealer.plan.x(p): run.peers[p]._exchange.held[dealer.me] for p in coalition}
            try:
                seed = shamir.combine({x: h.seed_share for x, h in held.items()})
                mask = shamir.combine({x: h.mask_share for x, h in held.items()})
            except DataError:  # an interpolated value ≥ 2^256 is no secret at all
                assert size < t
                continue
            rebuilt = seed == dealer._exchange.keys.seed or (
                AgreementKeyPair.from_secret(mask).public == dealer._exchange.keys.mask.public
            )
            assert rebuilt == (size >= t)


def test_the_documented_example_runs():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "secure-aggregation.md").read_text()
    code = doc.split("```python\n", 2)[2].split("```", 1)[0]  # the block after the interface
    scope: dict = {}
    exec(compile(code, "secure-aggregation.md", "exec"), scope)
    assert scope["run"].survivors == {f"hospital-{i}" for i in (0, 1, 2, 4)}
    survivors = scope["run"].survivors
    exact = sum(scope["updates"][p] for p in survivors) / len(survivors)
    assert np.abs(scope["average"] - exact).max() <= scope["fp"].step


def test_declared_input_bits_guard_against_wrapping():
    with pytest.raises(ConfigError, match="wrap"):
        plan_cohort(SecAggConfig("c", 1, 4, input_bits=30), frozenset(names(5)))
    plan_cohort(SecAggConfig("c", 1, 4, input_bits=29), frozenset(names(5)))
    signers, ids = make_identities(names(5))
    peer = SecAggPeer(
        SecAggConfig("c", 1, 4, input_bits=20), names(5)[0], signers[names(5)[0]], ids
    )
    with pytest.raises(DataError, match="20 bits"):
        peer.start(np.array([1, 2, 1 << 20, 3], dtype=np.uint32))
    with pytest.raises(ConfigError, match="input_bits"):
        SecAggConfig("c", 1, 4, input_bits=32)

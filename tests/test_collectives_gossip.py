from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from p2pfed.collectives.gossip import (
    GossipRound,
    VectorAssembly,
    mixing_row_and_targets,
    push_pull_delta,
)
from p2pfed.collectives.gossip_driver import GossipConfig, GossipOutcome, GossipService
from p2pfed.collectives.messages import GossipValue, WordType
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.transport import MemoryNetwork

CONSORTIUM = "gossip-test"
CONFIG = GossipConfig(chunk_bytes=256, deadline=2.0, timeout=2.0)


async def run_sync(
    topo: Any,
    vectors: dict[str, npt.NDArray[Any]],
    rounds: int,
    *,
    absent: frozenset[str] = frozenset(),
    tamper: dict[str, npt.NDArray[Any]] | None = None,
) -> dict[str, list[GossipOutcome]]:
    net = MemoryNetwork()
    peers = list(vectors)
    present = [p for p in peers if p not in absent]
    out: dict[str, list[GossipOutcome]] = {p: [] for p in present}
    ready = trio.Event()
    started: set[str] = set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            service = GossipService(transport, CONSORTIUM, peers, topo, config=CONFIG)
            started.add(me)
            if len(started) == len(present):
                ready.set()
            await ready.wait()
            x = (tamper or {}).get(me, vectors[me])
            for t in range(rounds):
                outcome = await service.sync_round(t, x)
                out[me].append(outcome)
                x = outcome.vector
            await trio.sleep(CONFIG.deadline)

    async with trio.open_nursery() as nursery:
        for p in present:
            nursery.start_soon(peer, p)
    return out


def stack(vectors: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return np.stack(list(vectors.values()))


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "complete"])
async def test_sync_round_applies_the_mixing_matrix(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    n = 9 if name == "torus" else 8
    topo = topologies.build(name, n)
    rng = np.random.default_rng(1)
    vectors = {f"p{i}": rng.normal(size=50) for i in range(n)}
    out = await run_sync(topo, vectors, 2)
    x = stack(vectors)
    for t in range(2):
        x = topo.mixing_at(t) @ x
        for i, p in enumerate(vectors):
            np.testing.assert_allclose(out[p][t].vector, x[i], rtol=1e-12, atol=1e-12)
            assert not out[p][t].missing


async def test_one_peer_exponential_reaches_the_exact_average(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 16
    topo = topologies.build("one_peer_exponential", n)
    rng = np.random.default_rng(2)
    vectors = {f"p{i}": rng.normal(size=20) for i in range(n)}
    out = await run_sync(topo, vectors, 4)
    mean = stack(vectors).mean(axis=0)
    for p in vectors:
        np.testing.assert_allclose(out[p][-1].vector, mean, rtol=1e-9, atol=1e-12)


async def test_missing_neighbour_weight_is_folded_into_self_weight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 6
    topo = topologies.build("ring", n)
    vectors = {f"p{i}": np.full(10, float(i)) for i in range(n)}
    out = await run_sync(topo, vectors, 1, absent=frozenset({"p3"}))
    w = topo.mixing_at(0).toarray()
    for i in (2, 4):
        got = out[f"p{i}"][0]
        assert got.missing == ("p3",)
        expected = (w[i, i] + w[i, 3]) * i + sum(w[i, j] * j for j in range(n) if j not in (i, 3))
        np.testing.assert_allclose(got.vector, expected)
        assert min(vectors[f"p{j}"][0] for j in range(n)) <= got.vector[0] <= 5


async def test_wrong_shape_and_dtype_vectors_are_rejected_with_reasons(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 4
    topo = topologies.build("complete", n)
    vectors = {f"p{i}": np.ones(10) for i in range(n)}
    tamper = {"p1": np.ones(9), "p2": np.ones(10, np.float32)}
    out = await run_sync(topo, vectors, 1, tamper=tamper)
    reasons = {(e.peer, e.reason) for e in out["p0"][0].exclusions}
    assert reasons == {("p1", ReasonCode.WRONG_SHAPE), ("p2", ReasonCode.WRONG_DTYPE)}
    assert out["p0"][0].missing == ("p1", "p2")
    np.testing.assert_allclose(out["p0"][0].vector, 1.0)


def test_gossip_round_core_checks() -> None:
    core = GossipRound(np.zeros(4), 3, {"a": 0.25, "b": 0.25}, 0.5)
    with pytest.raises(RemoteProtocolError) as info:
        core.receive("a", 2, WordType.FLOAT64, bytes(32))
    assert info.value.reason is ReasonCode.WRONG_ROUND
    with pytest.raises(RemoteProtocolError) as info:
        core.receive("c", 3, WordType.FLOAT64, bytes(32))
    assert info.value.reason is ReasonCode.PROTOCOL_VIOLATION
    assert not core.receive("a", 3, WordType.FLOAT64, np.ones(4).tobytes())
    with pytest.raises(RemoteProtocolError) as info:
        core.receive("a", 3, WordType.FLOAT64, bytes(32))
    assert info.value.reason is ReasonCode.REPLAY
    np.testing.assert_allclose(core.mix(), 0.25)
    with pytest.raises(LocalProtocolError, match="sum to 1"):
        GossipRound(np.zeros(4), 0, {"a": 0.6}, 0.6)
    with pytest.raises(LocalProtocolError, match="integers"):
        GossipRound(np.zeros(4, np.uint32), 0, {"a": 0.5}, 0.5)


def test_directed_rows_and_targets_are_consistent() -> None:
    topo = topologies.build("one_peer_exponential", 8)
    for t in range(3):
        for i in range(8):
            weights, self_weight, targets = mixing_row_and_targets(topo, t, i)
            assert abs(sum(weights.values()) + self_weight - 1) < 1e-12
            for j in targets:
                assert i in mixing_row_and_targets(topo, t, j)[0]


async def test_push_pull_conserves_the_sum_and_contracts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 8
    topo = topologies.build("ring", n)
    rng = np.random.default_rng(3)
    vectors = {f"p{i}": rng.normal(size=30) for i in range(n)}
    net = MemoryNetwork()
    services: dict[str, GossipService] = {}
    ready = trio.Event()
    finished = trio.Event()
    done: set[str] = set()

    async def peer(me: str, seed: int) -> None:
        async with net.open(me) as transport:
            service = GossipService(
                transport, CONSORTIUM, list(vectors), topo, config=CONFIG, rng=random.Random(seed)
            )
            service.set_value(vectors[me])
            services[me] = service
            if len(services) == n:
                ready.set()
            await ready.wait()
            for t in range(25):
                await service.push_pull(t)
                await trio.sleep(random.Random(seed * 100 + t).random() * 0.01)
            done.add(me)
            if len(done) == n:
                finished.set()
            await finished.wait()

    async with trio.open_nursery() as nursery:
        for k, p in enumerate(vectors):
            nursery.start_soon(peer, p, k)
    before = stack(vectors)
    after = np.stack([services[p].value for p in vectors])  # type: ignore[misc]
    np.testing.assert_allclose(after.sum(axis=0), before.sum(axis=0), rtol=1e-9, atol=1e-9)
    assert np.var(after, axis=0).mean() < 0.05 * np.var(before, axis=0).mean()


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 6),
    heard_mask=st.integers(0, 63),
    seed=st.integers(0, 2**32 - 1),
)
def test_folded_mixing_is_a_convex_combination(k: int, heard_mask: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.01, 1.0, k + 1)
    w = raw / raw.sum()
    names = [f"n{j}" for j in range(k)]
    own = rng.normal(size=5)
    others = {name: rng.normal(size=5) for name in names}
    core = GossipRound(own, 0, dict(zip(names, w[1:], strict=True)), float(w[0]))
    heard = [name for j, name in enumerate(names) if heard_mask >> j & 1]
    for name in heard:
        core.receive(name, 0, WordType.FLOAT64, others[name].tobytes())
    mixed = core.mix()
    folded = w[0] + sum(w[1 + j] for j, name in enumerate(names) if name not in heard)
    expected = folded * own + sum(w[1 + names.index(n)] * others[n] for n in heard)
    np.testing.assert_allclose(mixed, expected, rtol=1e-12, atol=1e-12)
    stack_ = np.stack([own] + [others[n] for n in heard])
    assert np.all(mixed >= stack_.min(axis=0) - 1e-12)
    assert np.all(mixed <= stack_.max(axis=0) + 1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drift=st.floats(-3, 3))
def test_push_pull_deltas_cancel_even_when_values_moved_meanwhile(seed: int, drift: float) -> None:
    rng = np.random.default_rng(seed)
    sent, theirs = rng.normal(size=7), rng.normal(size=7)
    mine_now = sent + drift  # another exchange touched our value in between
    initiator = mine_now + push_pull_delta(sent, theirs)
    served = theirs + push_pull_delta(theirs, sent)
    np.testing.assert_allclose(initiator + served, mine_now + theirs, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    words=st.integers(0, 300),
    cuts=st.lists(st.integers(1, 64), min_size=1, max_size=20),
    data=st.data(),
)
def test_a_vector_sent_in_any_slicing_is_reassembled_and_a_gap_is_refused(
    words: int, cuts: list[int], data: st.DataObject
) -> None:
    vector = np.arange(words, dtype=np.float32)
    slices = []
    offset = 0
    for cut in itertools.cycle(cuts):
        part = vector[offset : offset + cut]
        slices.append(GossipValue(7, offset, words, WordType.FLOAT32, part.tobytes()))
        offset += len(part)
        if offset >= words:
            break
    assembly = VectorAssembly("p", max_words=1 << 20)
    results = [assembly.add(s) for s in slices]
    assert results[:-1] == [None] * (len(slices) - 1)
    assert results[-1] == (7, WordType.FLOAT32, vector.tobytes())
    if len(slices) > 1:
        # Leave out one slice: the next one does not continue where the last one ended.
        gap = data.draw(st.integers(0, len(slices) - 2))
        gappy = VectorAssembly("p", max_words=1 << 20)
        for s in slices[:gap]:
            gappy.add(s)
        with pytest.raises(RemoteProtocolError) as caught:
            gappy.add(slices[gap + 1])
        assert caught.value.reason is ReasonCode.OUT_OF_ORDER and caught.value.peer == "p"
    with pytest.raises(RemoteProtocolError) as too_big:
        VectorAssembly("p", max_words=words - 1).add(slices[0])
    assert too_big.value.reason is ReasonCode.OVERSIZED

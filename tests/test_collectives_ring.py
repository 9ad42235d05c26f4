from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives import (
    Fault,
    FaultPlan,
    InjectedCrash,
    RingAllReduce,
    RingConfig,
    RingResult,
    RingService,
    ring_order,
)
from p2pfed.collectives.messages import RingChunk, WordType
from p2pfed.collectives.ring import RING_TRANSITIONS, RingState, chunk_bounds
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.transport import MemoryNetwork

CONSORTIUM = "test-consortium"


def simulate(
    vectors: list[npt.NDArray[Any]], chunk_bytes: int, bits: int | None = None
) -> list[Any]:
    return [core.result for core in simulate_cores(vectors, chunk_bytes, bits)]


def simulate_cores(
    vectors: list[npt.NDArray[Any]], chunk_bytes: int, bits: int | None = None
) -> list[RingAllReduce]:
    """Run the sans-I/O cores against each other with no I/O at all."""
    n = len(vectors)
    cores = [
        RingAllReduce(v, r, n, round=1, chunk_bytes=chunk_bytes, modulus_bits=bits)
        for r, v in enumerate(vectors)
    ]
    queues: list[list[RingChunk]] = [[] for _ in range(n)]
    for r, core in enumerate(cores):
        queues[(r + 1) % n] += core.start()
    moved = True
    while moved:
        moved = False
        for r in range(n):
            while queues[r]:
                queues[(r + 1) % n] += cores[r].receive(queues[r].pop(0), f"p{(r - 1) % n}")
                moved = True
    assert all(core.done for core in cores)
    return cores


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    length=st.integers(0, 300),
    chunk_words=st.integers(1, 50),
    bits=st.sampled_from([None, 1, 17, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_core_sums_integers_exactly_mod_2k(
    n: int, length: int, chunk_words: int, bits: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    top = 2 ** (bits or 32)
    vectors = [rng.integers(0, top, length, dtype=np.uint64).astype(np.uint32) for _ in range(n)]
    expected = np.sum(np.stack(vectors).astype(np.uint64), axis=0) % top if n else None
    for result in simulate(vectors, chunk_words * 4, bits):
        assert result.dtype == np.uint32
        np.testing.assert_array_equal(result, expected)


def test_core_payload_bytes_are_the_bandwidth_optimum() -> None:
    n, length = 8, 8 * 1000
    vectors = [np.ones(length, np.float64) for _ in range(n)]
    cores = simulate_cores(vectors, 4096)
    ideal = 2 * (n - 1) / n * length * 8
    for core in cores:
        assert np.all(core.result == n)
        assert core.chunks_per_segment == 2
        assert core.payload_bytes_sent == ideal
        assert core.payload_bytes_received == ideal


def test_chunk_bounds_cover_the_vector_with_equal_chunk_counts() -> None:
    for length, peers, words in [(0, 3, 1), (10, 4, 3), (1001, 7, 16), (5, 8, 100)]:
        bounds = chunk_bounds(length, peers, words)
        flat = [b for seg in bounds for b in seg]
        assert flat[0][0] == 0 and flat[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(flat))
        assert len({len(seg) for seg in bounds}) == 1


def test_transition_table_has_no_exit_from_final_states() -> None:
    assert not [k for k in RING_TRANSITIONS if k[0] in (RingState.DONE, RingState.FAILED)]


def test_ring_order_is_deterministic_and_moves_with_round() -> None:
    peers = [f"peer-{i}" for i in range(16)]
    a = ring_order(CONSORTIUM, 3, 10, peers)
    assert a == ring_order(CONSORTIUM, 3, 10, reversed(peers))
    assert sorted(a) == sorted(peers)
    assert a != ring_order(CONSORTIUM, 3, 11, peers)
    assert a != ring_order(CONSORTIUM, 4, 10, peers)
    assert a != ring_order(CONSORTIUM, 3, 10, peers, attempt=1)
    with pytest.raises(LocalProtocolError):
        ring_order(CONSORTIUM, 3, 10, [])


def test_core_rejects_bad_chunks_with_reason_codes() -> None:
    def fresh() -> tuple[RingAllReduce, RingChunk]:
        peer = RingAllReduce(np.zeros(64, np.float32), 1, 2, round=5, chunk_bytes=64)
        other = RingAllReduce(np.ones(64, np.float32), 0, 2, round=5, chunk_bytes=64)
        peer.start()
        return peer, other.start()[0]

    cases = {
        ReasonCode.WRONG_ROUND: lambda m: RingChunk(4, 0, m.step, m.chunk, m.word, m.data),
        ReasonCode.OUT_OF_ORDER: lambda m: RingChunk(5, 0, 0, 1, m.word, m.data),
        ReasonCode.WRONG_DTYPE: lambda m: RingChunk(5, 0, 0, 0, WordType.UINT32, m.data),
        ReasonCode.WRONG_SHAPE: lambda m: RingChunk(5, 0, 0, 0, m.word, m.data[:-4]),
    }
    for reason, forge in cases.items():
        core, good = fresh()
        with pytest.raises(RemoteProtocolError) as info:
            core.receive(forge(good), "p0")
        assert info.value.reason is reason and info.value.peer == "p0"
        assert core.state is RingState.FAILED
    core, good = fresh()
    core.receive(good, "p0")
    with pytest.raises(RemoteProtocolError) as info:
        core.receive(good, "p0")
    assert info.value.reason is ReasonCode.REPLAY


def test_core_refuses_bad_local_input() -> None:
    with pytest.raises(LocalProtocolError, match="dtype"):
        RingAllReduce(np.zeros(4, np.int16), 0, 2, round=0)
    with pytest.raises(LocalProtocolError, match="flat"):
        RingAllReduce(np.zeros((2, 2), np.float32), 0, 2, round=0)
    with pytest.raises(LocalProtocolError, match="modulus"):
        RingAllReduce(np.full(4, 9, np.uint32), 0, 2, round=0, modulus_bits=3)
    with pytest.raises(LocalProtocolError, match="rank"):
        RingAllReduce(np.zeros(4, np.float32), 2, 2, round=0)


async def run_ring(
    vectors: dict[str, npt.NDArray[Any]],
    *,
    round: int = 1,
    config: RingConfig | None = None,
    faults: dict[str, FaultPlan] | None = None,
    network: MemoryNetwork | None = None,
) -> tuple[dict[str, RingResult | BaseException], dict[str, RingService]]:
    net = network or MemoryNetwork()
    order = ring_order(CONSORTIUM, 1, round, vectors)
    outcomes: dict[str, RingResult | BaseException] = {}
    services: dict[str, RingService] = {}
    all_ready = trio.Event()

    async def one(peer: str) -> None:
        # Each peer lives inside its own transport block, as in its own process: a crash
        # cancels that block only.
        async with net.open(peer) as transport:
            services[peer] = RingService(
                transport, CONSORTIUM, fault=(faults or {}).get(peer), accept_timeout=5
            )
            if len(services) == len(vectors):
                all_ready.set()
            await all_ready.wait()
            try:
                outcomes[peer] = await services[peer].all_reduce(
                    vectors[peer], order, round=round, config=config
                )
            except (RemoteProtocolError, InjectedCrash) as exc:
                outcomes[peer] = exc

    async with trio.open_nursery() as nursery:
        for peer in vectors:
            nursery.start_soon(one, peer)
    return outcomes, services


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 32])
async def test_memory_ring_integer_sums_are_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = {
        f"p{i}": rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32) for i in range(n)
    }
    expected = np.zeros(5000, np.uint32)
    for v in vectors.values():
        expected += v
    outcomes, _ = await run_ring(vectors, config=RingConfig(chunk_bytes=1024))
    for result in outcomes.values():
        assert isinstance(result, RingResult)
        np.testing.assert_array_equal(result.vector, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
async def test_memory_ring_float_sums_and_byte_counts(dtype: Any) -> None:
    n, length = 6, 60_000
    rng = np.random.default_rng(7)
    vectors = {f"p{i}": rng.uniform(0.5, 1.5, length).astype(dtype) for i in range(n)}
    exact = np.sum(np.stack(list(vectors.values())).astype(np.float64), axis=0)
    outcomes, _ = await run_ring(vectors, config=RingConfig(chunk_bytes=32 * 1024))
    ideal = 2 * (n - 1) / n * length * np.dtype(dtype).itemsize
    for result in outcomes.values():
        assert isinstance(result, RingResult)
        np.testing.assert_allclose(result.vector, exact, rtol=1e-6)
        assert result.counts.payload_sent == pytest.approx(ideal, rel=1e-3)
        assert result.counts.framing_sent <= 0.01 * result.counts.payload_sent
        assert result.bytes_sent <= 1.01 * ideal


async def test_memory_ring_uint64_words_mod_2k() -> None:
    vectors = {f"p{i}": np.full(100, 2**40 - 1 - i, np.uint64) for i in range(4)}
    outcomes, _ = await run_ring(vectors, config=RingConfig(chunk_bytes=64, modulus_bits=41))
    expected = sum(int(v[0]) for v in vectors.values()) % 2**41
    for result in outcomes.values():
        assert isinstance(result, RingResult)
        assert np.all(result.vector == expected)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.WRONG_SHAPE, ReasonCode.WRONG_SHAPE),
        (Fault.WRONG_DTYPE, ReasonCode.WRONG_DTYPE),
        (Fault.REPLAY, ReasonCode.REPLAY),
        (Fault.STALE_ROUND, ReasonCode.WRONG_ROUND),
    ],
)
async def test_memory_ring_names_the_misbehaving_peer(fault: Fault, reason: ReasonCode) -> None:
    vectors = {f"p{i}": np.ones(400, np.float32) for i in range(4)}
    outcomes, services = await run_ring(
        vectors, config=RingConfig(chunk_bytes=64, timeout=2), faults={"p2": FaultPlan(fault, at=3)}
    )
    order = ring_order(CONSORTIUM, 1, 1, vectors)
    victim = order[(order.index("p2") + 1) % 4]
    got = outcomes[victim]
    assert isinstance(got, RemoteProtocolError)
    assert got.reason is reason and got.peer == "p2"
    assert [(e.peer, e.reason) for e in services[victim].exclusions] == [("p2", reason)]


async def test_memory_ring_crash_is_detected_by_neighbours_within_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time: the bound is on the protocol's deadlines, not on this machine's load.
    net = MemoryNetwork()
    vectors = {f"p{i}": np.ones(4000, np.float32) for i in range(5)}
    plan = FaultPlan(Fault.CRASH, at=5, on_crash=lambda: net.crash("p3"))
    start = trio.current_time()
    outcomes, _ = await run_ring(
        vectors, config=RingConfig(chunk_bytes=256, timeout=1.0), faults={"p3": plan}, network=net
    )
    assert trio.current_time() - start < 3.0
    assert not isinstance(outcomes.get("p3"), RingResult)
    order = ring_order(CONSORTIUM, 1, 1, vectors)
    successor = order[(order.index("p3") + 1) % 5]
    got = outcomes[successor]
    assert isinstance(got, RemoteProtocolError) and got.peer == "p3"
    assert all(isinstance(o, RemoteProtocolError) for p, o in outcomes.items() if p != "p3")


async def test_late_stream_for_finished_round_is_rejected_as_wrong_round() -> None:
    from p2pfed.collectives.codec import MessageStream
    from p2pfed.collectives.ring_driver import RING_PROTOCOL

    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:
        service_a = RingService(a, CONSORTIUM, accept_timeout=1)
        service_b = RingService(b, CONSORTIUM, accept_timeout=1)
        order = ("a", "b")
        async with trio.open_nursery() as nursery:
            for svc in (service_a, service_b):
                nursery.start_soon(
                    lambda s: s.all_reduce(np.ones(8, np.float32), order, round=7), svc
                )
        stream = await b.open_stream("a", RING_PROTOCOL)
        late = MessageStream(stream, CONSORTIUM, "b")
        await late.send(RingChunk(6, 0, 0, 0, WordType.FLOAT32, bytes(16)))
        assert await stream.receive_some() == b""
        assert service_a.exclusions[-1].reason is ReasonCode.WRONG_ROUND
        assert service_a.exclusions[-1].peer == "b"


@pytest.mark.parametrize("cap", [1 << 30, 4 * 256, 1])
async def test_a_fast_sender_cannot_make_a_late_receiver_buffer_past_its_cap(
    cap: int, autojump_clock: trio.testing.MockClock
) -> None:
    """a streams its whole share while b has not started: b reads ahead at most ``cap``
    (plus the frame that crossed it), then a waits; the sum is right either way."""
    net = MemoryNetwork()
    order = ("a", "b")
    outcomes: dict[str, RingResult | BaseException] = {}
    async with net.open("a") as a, net.open("b") as b:
        services = {
            "a": RingService(a, CONSORTIUM, accept_timeout=30),
            "b": RingService(b, CONSORTIUM, accept_timeout=30, max_read_ahead=cap),
        }
        config = RingConfig(chunk_bytes=256, timeout=20)

        async def one(peer: str, delay: float) -> None:
            await trio.sleep(delay)
            try:
                outcomes[peer] = await services[peer].all_reduce(
                    np.ones(100_000, np.float32), order, round=1, config=config
                )
            except RemoteProtocolError as exc:
                outcomes[peer] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "a", 0.0)
            nursery.start_soon(one, "b", 10.0)  # b starts long after a began streaming
    assert all(isinstance(o, RingResult) and np.all(o.vector == 2) for o in outcomes.values())
    frame = 256 + 1024  # one chunk and its envelope, generously
    peak = services["b"].read_ahead_peak
    assert peak > 0
    if cap < 1 << 30:
        assert peak <= cap + frame
    else:  # unbounded, b holds far more: what the cap prevents
        assert peak > 100 * frame


async def test_a_stream_from_a_peer_other_than_the_predecessor_cannot_feed_the_ring(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Peer c opens a ring stream for a's running attempt before a's predecessor b does:
    it is refused (and named), b's stream is taken, and nothing of c's is in a's sum."""
    from p2pfed.collectives.codec import MessageStream
    from p2pfed.collectives.ring_driver import RING_PROTOCOL

    net = MemoryNetwork()
    order = ("a", "b")
    results: dict[str, RingResult] = {}
    async with net.open("a") as a, net.open("b") as b, net.open("c") as c:
        services = {"a": RingService(a, CONSORTIUM), "b": RingService(b, CONSORTIUM)}

        async def run(peer: str, delay: float) -> None:
            await trio.sleep(delay)
            results[peer] = await services[peer].all_reduce(np.ones(8, np.float32), order, round=9)

        async def intrude() -> None:
            await trio.sleep(0.5)
            stream = await c.open_stream("a", RING_PROTOCOL)
            forged = np.full(4, 100.0, np.float32).tobytes()  # the segment a expects first
            await MessageStream(stream, CONSORTIUM, "c").send(
                RingChunk(9, 0, 0, 0, WordType.FLOAT32, forged)
            )
            assert await stream.receive_some() == b""  # closed on us
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a", 0.0)
            nursery.start_soon(intrude)
            nursery.start_soon(run, "b", 1.0)
    assert np.all(results["a"].vector == 2) and np.all(results["b"].vector == 2)
    refused = [e for e in services["a"].exclusions if e.peer == "c"]
    assert [e.reason for e in refused] == [ReasonCode.UNEXPECTED_STAGE]

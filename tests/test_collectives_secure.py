from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from secure_gossip_peers import run_peers, secure_service

from p2pfed.collectives import Fault, FaultPlan, InjectedCrash, RingConfig
from p2pfed.collectives.agreement_state import AgreementTiming
from p2pfed.collectives.secure import SecureOutcome, SecureRingRound
from p2pfed.collectives.secure_gossip import SecureGossipService
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import DataError
from p2pfed.secagg import Stage
from p2pfed.secagg.harness import identity_seed, make_identities, seeded_random_bytes
from p2pfed.transport import MemoryNetwork

CONSORTIUM = "secure-test"
TIMING = AgreementTiming(collect_window=1.0, takeover_timeout=3.0, commit_timeout=6.0)
RING = RingConfig(chunk_bytes=1024, timeout=2.0)


async def run_secure(
    inputs: dict[str, npt.NDArray[Any]],
    *,
    faults: dict[str, FaultPlan] | None = None,
    network: MemoryNetwork | None = None,
    late: dict[str, float] | None = None,
) -> dict[str, SecureOutcome | BaseException]:
    """``late``: seconds a peer's masked vector is late for the ring (slow masking)."""
    net = network or MemoryNetwork()
    names = sorted(inputs)
    signers, identities = make_identities(names)
    outcomes: dict[str, SecureOutcome | BaseException] = {}
    ready = trio.Event()
    built: set[str] = set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            secure = SecureRingRound(
                transport,
                CONSORTIUM,
                1,
                identities,
                signers[me],
                Ed25519CohortSigner(identity_seed(me), identities),
                timing=TIMING,
                ring_config=RING,
                stage_timeout=3.0,
                fault=(faults or {}).get(me),
                random_bytes=seeded_random_bytes(7, me),
            )
            if me in (late or {}):
                summed = secure.ring_round.all_reduce

                async def slowly(*args: Any, **kwargs: Any) -> Any:
                    await trio.sleep((late or {})[me])
                    return await summed(*args, **kwargs)

                secure.ring_round.all_reduce = slowly  # type: ignore[method-assign]
            built.add(me)
            if len(built) == len(names):
                ready.set()
            await ready.wait()
            try:
                outcomes[me] = await secure.aggregate(inputs[me], 5)
            except InjectedCrash as exc:
                outcomes[me] = exc
                return
            await trio.sleep(4.0)  # stay up for slower peers' reveals

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(peer, name)
    return outcomes


def inputs_for(n: int, length: int = 2000) -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(n)
    return {
        f"h{i}": rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32) for i in range(n)
    }


def plain_sum(inputs: dict[str, npt.NDArray[Any]], peers: set[str] | frozenset[str]) -> Any:
    total = np.zeros_like(next(iter(inputs.values())))
    for p in sorted(peers):
        total += inputs[p]
    return total


def exact_sum(
    got: SecureOutcome | BaseException, inputs: dict[str, npt.NDArray[Any]], members: Any
) -> SecureOutcome:
    """``got``: a completed secure round whose result is the plain sum over ``members``."""
    assert isinstance(got, SecureOutcome) and got.ok, got
    assert got.survivors == frozenset(members)
    assert got.result is not None
    np.testing.assert_array_equal(got.result, plain_sum(inputs, set(members)))
    return got


@pytest.mark.parametrize("n", [3, 5])
async def test_secure_ring_unmasks_the_exact_sum(
    n: int, autojump_clock: trio.testing.MockClock
) -> None:
    inputs = inputs_for(n)
    outcomes = await run_secure(inputs)
    for name in inputs:
        got = exact_sum(outcomes[name], inputs, inputs)
        # What crossed the ring was masked: no peer's sum equals a plain partial sum.
        assert got.ring is not None and got.ring.result is not None
        assert not np.array_equal(got.ring.result.vector, got.result)


async def test_a_member_masking_later_than_the_collect_window_is_still_in_the_sum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its Ready reaches the coordinator (h2) after the window: a cohort without it would
    fall short of the survivors' quorum (3 of 3) and abort, so the coordinator waits."""
    inputs = inputs_for(3)
    late = (TIMING.collect_window + TIMING.patience) / 2
    outcomes = await run_secure(inputs, late={"h0": late})
    for name in inputs:
        got = exact_sum(outcomes[name], inputs, inputs)
        assert got.ring is not None and got.ring.attempts == 1


async def test_peer_killed_during_the_masked_ring_is_recovered_by_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inputs = inputs_for(5)
    net = MemoryNetwork()
    plan = FaultPlan(Fault.CRASH, at=3, on_crash=lambda: net.crash("h1"))
    outcomes = await run_secure(inputs, faults={"h1": plan}, network=net)
    survivors = frozenset(inputs) - {"h1"}
    for name in survivors:
        got = exact_sum(outcomes[name], inputs, survivors)
        assert got.ring is not None and got.ring.attempts == 2
    assert not isinstance(outcomes.get("h1"), SecureOutcome)


async def test_three_peers_one_killed_at_its_first_chunk_the_two_survivors_abort(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A sum of two would hand each survivor the other's input: the round aborts before any
    # reveal, over the real driver and ring.
    inputs = inputs_for(3)
    net = MemoryNetwork()
    plan = FaultPlan(Fault.CRASH, at=0, on_crash=lambda: net.crash("h0"))
    outcomes = await run_secure(inputs, faults={"h0": plan}, network=net)
    for name in ("h1", "h2"):
        got = outcomes[name]
        assert isinstance(got, SecureOutcome) and not got.ok and got.result is None
        assert got.stage is Stage.ABORTED
        assert got.abort_reason is not None and "min_contributors 3" in got.abort_reason
        assert "nothing was revealed" in got.abort_reason
        assert got.ring is not None and got.ring.cohort == ("h1", "h2")


async def test_masked_sum_refuses_other_peers_vectors() -> None:
    from p2pfed.collectives.round import RingRound
    from p2pfed.collectives.secure import RingMaskedSum

    net = MemoryNetwork()
    async with net.open("a") as a:
        signer = Ed25519CohortSigner(bytes(32), {})
        masked = RingMaskedSum(RingRound(a, CONSORTIUM, 1, ["a", "b"], signer))
        with pytest.raises(DataError):
            await masked.sum({"b": np.zeros(3, np.uint32)}, 32, 0)
        with pytest.raises(DataError):
            await masked.sum({"a": np.zeros(3, np.uint64)}, 32, 0)


async def run_secure_gossip(
    topo: Any,
    vectors: dict[str, npt.NDArray[Any]],
    rounds: int,
    absent: frozenset[str] = frozenset(),
) -> dict[str, list[Any]]:
    names = list(vectors)
    out: dict[str, list[Any]] = {p: [] for p in names if p not in absent}

    async def rounds_of(me: str, service: SecureGossipService) -> None:
        x = vectors[me]
        for t in range(rounds):
            outcome = await service.sync_round(t, x)
            out[me].append(outcome)
            x = outcome.vector

    build = partial(secure_service, names=names, topology=topo, consortium=CONSORTIUM, seed=3)
    await run_peers(names, build, rounds_of, present=out)
    return out


async def test_secure_gossip_matches_plain_mixing_within_quantisation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import topologies

    n = 5
    topo = topologies.build("ring", n)
    rng = np.random.default_rng(4)
    vectors = {f"h{i}": rng.uniform(-1, 1, 40) for i in range(n)}
    out = await run_secure_gossip(topo, vectors, 2)
    x = np.stack(list(vectors.values()))
    for t in range(2):
        x = topo.mixing_at(t) @ x
        for i, p in enumerate(vectors):
            got = out[p][t]
            assert got.contributors == {f"h{j}" for j in ((i - 1) % n, i, (i + 1) % n)}
            np.testing.assert_allclose(got.vector, x[i], atol=1e-4)


async def test_secure_gossip_folds_an_absent_neighbour_into_self(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import topologies

    n = 5
    topo = topologies.build("complete", n)
    vectors = {f"h{i}": np.full(8, float(i) / 10) for i in range(n)}
    out = await run_secure_gossip(topo, vectors, 1, absent=frozenset({"h2"}))
    w = topo.mixing_at(0).toarray()
    for i in (0, 1, 3, 4):
        got = out[f"h{i}"][0]
        assert got.missing == ("h2",)
        expected = (w[i, i] + w[i, 2]) * i / 10 + sum(
            w[i, j] * j / 10 for j in range(n) if j not in (i, 2)
        )
        np.testing.assert_allclose(got.vector, expected, atol=1e-4)


async def test_secure_gossip_forms_no_sum_below_the_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a 5-ring without h2, h1's and h3's groups hold two: no sum, own value kept."""
    import topologies

    n = 5
    topo = topologies.build("ring", n)
    vectors = {f"h{i}": np.full(8, float(i) / 10) for i in range(n)}
    out = await run_secure_gossip(topo, vectors, 1, absent=frozenset({"h2"}))
    for i in (1, 3):
        got = out[f"h{i}"][0]
        assert got.contributors == {f"h{i}"}
        np.testing.assert_array_equal(got.vector, vectors[f"h{i}"])

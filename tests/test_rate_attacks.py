"""A member flooding a protocol with streams, through the real transports and services.

The victim's limiter runs on a clock frozen for the whole flood, so the allowance is exactly the
bucket's burst: the flooder must get no more streams served than that, be named once, and the
honest members' round on the same victim (ring, push-pull, model sync) must still complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import trio
from transport_harness import libp2p_group

import topologies
from p2pfed.collectives.gossip_driver import PUSH_PULL_PROTOCOL, GossipConfig, GossipService
from p2pfed.collectives.ring_driver import RING_PROTOCOL, RingResult, RingService
from p2pfed.errors import BrokenError
from p2pfed.node.certificates import CommitCertificate
from p2pfed.node.sync import MODEL_SYNC_PROTOCOL, ModelSync
from p2pfed.transport import MemoryNetwork, Transport
from p2pfed.transport.ratelimit import DEFAULT_LIMITS, StreamLimiter

CONSORTIUM = "rate-test"
PEERS = ("a", "b", "c", "f")  # a is the victim, f the flooding member
SIZE = 1000
LIMITER_LOG = "p2pfed.transport.ratelimit"


class FrozenClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Member:
    transport: Transport
    ring: RingService
    gossip: GossipService
    sync: ModelSync


@dataclass
class Served:
    models: int = 0

    def current(self) -> tuple[int, np.ndarray, CommitCertificate | None]:
        self.models += 1
        return 3, np.zeros(SIZE, np.float32), None


@asynccontextmanager
async def consortium(clock: FrozenClock, served: Served) -> AsyncIterator[dict[str, Member]]:
    net = MemoryNetwork()
    topology = topologies.build("ring", len(PEERS))
    config = GossipConfig(chunk_bytes=4096, deadline=2.0, timeout=2.0)
    async with AsyncExitStack() as stack:
        members: dict[str, Member] = {}
        for name in PEERS:
            limiter = StreamLimiter(clock=clock) if name == "a" else None
            transport = await stack.enter_async_context(net.open(name, limiter=limiter))
            gossip = GossipService(transport, CONSORTIUM, PEERS, topology, config=config)
            gossip.set_value(np.full(8, float(PEERS.index(name))))
            sync = ModelSync(transport, CONSORTIUM, served.current, SIZE, timeout=2.0)
            ring = RingService(transport, CONSORTIUM, accept_timeout=5)
            members[name] = Member(transport, ring, gossip, sync)
        yield members


async def flood(transport: Transport, victim: str, protocol: str, attempts: int) -> int:
    """Open ``attempts`` streams as fast as possible; how many the victim served."""
    served = 0
    for _ in range(attempts):
        try:
            stream = await transport.open_stream(victim, protocol)
        except BrokenError as exc:
            assert "over its rate" in str(exc)
            continue
        served += 1
        await stream.aclose()
    return served


async def honest_round(members: dict[str, Member]) -> None:
    """The honest members' traffic to the victim a: a ring round, push-pull, model sync."""
    results: dict[str, RingResult] = {}

    async def ring(name: str) -> None:
        vector = np.full(100, PEERS.index(name) + 1, np.uint32)
        results[name] = await members[name].ring.all_reduce(vector, ("a", "b", "c"), round=1)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(ring, name)
    assert all(np.all(r.vector == 6) for r in results.values())
    partners = [await members["b"].gossip.push_pull(t) for t in range(8)]  # a or c, at random
    assert None not in partners and "a" in partners
    status = await members["c"].sync.status_of("a")
    assert status.round == 3


@pytest.mark.parametrize("protocol", [MODEL_SYNC_PROTOCOL, RING_PROTOCOL, PUSH_PULL_PROTOCOL])
async def test_a_flooding_member_is_served_its_allowance_and_the_honest_round_completes(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LIMITER_LOG)
    clock, served = FrozenClock(), Served()
    burst, attempts = DEFAULT_LIMITS[protocol].burst, DEFAULT_LIMITS[protocol].burst + 2000
    async with consortium(clock, served) as members:
        started = time.process_time()
        got = await flood(members["f"].transport, "a", protocol, attempts)
        flood_cpu = time.process_time() - started
        limiter = members["a"].transport.limiter  # type: ignore[attr-defined]
        assert got == burst
        assert limiter.refused_by_peer("f") == attempts - burst
        # Refusals are cheap: 2,000 refused streams cost milliseconds, not a handler each.
        assert flood_cpu < 2.0
        await trio.testing.wait_all_tasks_blocked()
        if protocol == MODEL_SYNC_PROTOCOL:
            # Admitted streams that send no request never reach the model; none was served.
            assert served.models == 0
        await honest_round(members)
        # After a second the bucket has refilled by exactly rate x 1 s, no more.
        clock.now = 1.0
        refill = int(DEFAULT_LIMITS[protocol].rate)
        assert await flood(members["f"].transport, "a", protocol, refill + 50) == refill
    notices = [r.getMessage() for r in caplog.records if r.name == LIMITER_LOG]
    assert len(notices) == 1 and notices[0].startswith(f"peer f opens {protocol} streams")
    assert not any("peer b" in n or "peer c" in n for n in notices)


@pytest.mark.network
async def test_a_member_flooding_model_sync_over_libp2p_is_served_its_allowance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIMITER_LOG)
    clock, served = FrozenClock(), Served()
    burst, attempts = DEFAULT_LIMITS[MODEL_SYNC_PROTOCOL].burst, 150
    with trio.fail_after(60):
        async with libp2p_group(3, "rate") as g:
            victim, flooder, honest = g.transports
            victim.limiter = StreamLimiter(clock=clock)  # type: ignore[attr-defined]
            ModelSync(victim, CONSORTIUM, served.current, SIZE, timeout=2.0)
            asking = ModelSync(flooder, CONSORTIUM, served.current, SIZE, timeout=2.0)
            answered, refusals = 0, set()
            for _ in range(attempts):
                try:
                    await asking.status_of(victim.local_peer)
                    answered += 1
                except BrokenError as exc:
                    refusals.add(str(exc).replace(victim.local_peer, "V"))
            assert answered == burst
            assert served.models == burst  # the victim did the work of no refused request
            assert refusals == {f"peer V refused our {MODEL_SYNC_PROTOCOL} stream: over its rate"}
            check = ModelSync(honest, CONSORTIUM, served.current, SIZE, timeout=2.0)
            assert (await check.status_of(victim.local_peer)).round == 3
    notices = [r.getMessage() for r in caplog.records if r.name == LIMITER_LOG]
    assert len(notices) == 1 and notices[0].startswith(f"peer {flooder.local_peer} opens")

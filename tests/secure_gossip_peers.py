"""Secure gossip peers on one in-memory network, started together (shared test scaffolding).

``run_peers`` opens every present peer, builds its service with ``build``, waits until all
are built (so no peer's first round starts before another can answer), runs ``body`` and
then keeps the peer up for a while, because slower peers may still ask it for masked sums.
``secure_service`` builds a ``SecureGossipService`` (or a subclass playing an attacker) with
the deterministic identities, RNG and random bytes the tests use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import numpy as np
import trio

from p2pfed.collectives.gossip import MixingTopology
from p2pfed.collectives.secure_gossip import SecureGossipService
from p2pfed.secagg.harness import make_identities, seeded_random_bytes
from p2pfed.transport import MemoryNetwork
from p2pfed.transport.base import Transport

S = TypeVar("S")
LINGER_S = 5.0  # stay up after the last round: slower peers' instances may still need us


async def run_peers(
    names: Sequence[str],
    build: Callable[[str, Transport], S],
    body: Callable[[str, S], Awaitable[None]],
    present: Collection[str] | None = None,
) -> None:
    """Run ``body(me, service)`` at every present peer once all services are built."""
    net = MemoryNetwork()
    live = list(names) if present is None else [p for p in names if p in present]
    built: set[str] = set()
    ready = trio.Event()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            service = build(me, transport)
            built.add(me)
            if len(built) == len(live):
                ready.set()
            await ready.wait()
            await body(me, service)
            await trio.sleep(LINGER_S)

    async with trio.open_nursery() as nursery:
        for p in live:
            nursery.start_soon(peer, p)


def secure_service(
    me: str,
    transport: Transport,
    *,
    names: Sequence[str],
    topology: MixingTopology,
    consortium: str,
    seed: int,
    kind: type[SecureGossipService] = SecureGossipService,
    **options: Any,
) -> SecureGossipService:
    """``me``'s secure gossip service (``kind``) with the tests' deterministic keys."""
    signers, identities = make_identities(names)
    return kind(
        transport,
        consortium,
        list(names),
        topology,
        identities,
        signers[me],
        stage_timeout=2.0,
        rng=np.random.default_rng(list(names).index(me)),
        random_bytes=seeded_random_bytes(seed, me),
        **options,
    )

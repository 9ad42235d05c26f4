"""The ring order and the gossip topology prefer direct links over relayed ones.

A link is relayed when both its ends sit behind NAT (the roster lists no address for them).
The properties are checked against every permutation of small cohorts (brute force), so
"a valid order exists ⇒ it is found" is tested, not assumed.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from p2pfed.collectives import ring_order
from p2pfed.collectives.gossip import RELAYED_PARTNER_WEIGHT, partner_weights, place_peers
from p2pfed.collectives.gossip_driver import GossipService
from p2pfed.collectives.round import RingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.daemon.build import build_gossip, cohort_of, relayed_members
from p2pfed.errors import LocalProtocolError
from p2pfed.identity import Identity, Member, Role, Roster
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.transport import MemoryNetwork
from tests.reporter_fakes import demo_member
from tests.test_collectives_round import RING, TIMING, signers

CONSORTIUM = "direct-links"
Edge = tuple[int, int]


def relayed_links(order: Sequence[str], relayed: Collection[str]) -> list[bool]:
    """Per ring link i → i+1: whether both ends are relayed."""
    n = len(order)
    if n < 2:
        return []
    return [order[i] in relayed and order[(i + 1) % n] in relayed for i in range(n)]


def adjacent_relayed(order: Sequence[str], relayed: Collection[str]) -> int:
    """How many pairs of consecutive ring links are both relayed."""
    links = relayed_links(order, relayed)
    return sum(links[i] and links[(i + 1) % len(links)] for i in range(len(links)))


cohorts = st.integers(1, 7).flatmap(
    lambda n: st.tuples(
        st.just([f"peer-{i}" for i in range(n)]),
        st.sets(st.integers(0, n - 1)),
        st.integers(0, 50),
        st.randoms(use_true_random=False),
    )
)


@settings(max_examples=150, deadline=None)
@given(cohorts)
def test_ring_order_keeps_relayed_links_apart_whenever_some_order_does(case) -> None:  # type: ignore[no-untyped-def]
    peers, picked, round, rng = case
    relayed = {peers[i] for i in picked}
    order = ring_order(CONSORTIUM, 1, round, peers, relayed=relayed)
    assert sorted(order) == sorted(peers)  # a permutation
    # The same on every peer: whatever order the cohort and the relayed set come in.
    shuffled = list(peers)
    rng.shuffle(shuffled)
    noise = {"not-in-cohort"}
    assert ring_order(CONSORTIUM, 1, round, shuffled, relayed=sorted(relayed | noise)) == order
    every = list(itertools.permutations(peers))
    best_adjacent = min(adjacent_relayed(p, relayed) for p in every)
    if best_adjacent == 0:
        assert adjacent_relayed(order, relayed) == 0, order
    fewest = min(sum(relayed_links(p, relayed)) for p in every)
    assert sum(relayed_links(order, relayed)) == fewest, order


def test_relayed_members_still_move_between_rounds_and_attempts() -> None:
    peers = [f"peer-{i}" for i in range(12)]
    relayed = set(peers[:5])
    orders = {
        ring_order(CONSORTIUM, 1, r, peers, a, relayed=relayed) for r in range(4) for a in range(2)
    }
    assert len(orders) == 8
    assert ring_order(CONSORTIUM, 1, 3, peers) == ring_order(CONSORTIUM, 1, 3, peers, relayed=())


def test_a_round_of_the_ring_puts_members_behind_nat_apart() -> None:
    """Through the whole round protocol: the committed ring is the spread one."""
    peers = ["a", "b", "c", "d"]
    plain = ring_order(CONSORTIUM, 1, 0, peers)
    relayed = {plain[0], plain[1]}  # neighbours in the hash order: one relayed link
    assert sum(relayed_links(plain, relayed)) == 1
    keys = signers(peers)
    net = MemoryNetwork()
    orders: dict[str, tuple[str, ...]] = {}

    async def main() -> None:
        ready = trio.Event()
        joined: set[str] = set()

        async def member(me: str, signer: Ed25519CohortSigner) -> None:
            async with net.open(me) as transport:
                runner = RingRound(
                    transport,
                    CONSORTIUM,
                    1,
                    peers,
                    signer,
                    timing=TIMING,
                    ring_config=RING,
                    relayed=relayed,
                )
                joined.add(me)
                if len(joined) == len(peers):
                    ready.set()
                await ready.wait()
                outcome = await runner.all_reduce(np.ones(64, np.float32), 0)
                assert outcome.committed and outcome.result is not None
                orders[me] = outcome.result.order
                await trio.sleep(TIMING.takeover_timeout)

        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(member, p, keys[p])

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(set(orders.values())) == 1
    (order,) = set(orders.values())
    assert sum(relayed_links(order, relayed)) == 0, order


def inner_edges(placed: Sequence[str], relayed: Collection[str], edges: list[Edge]) -> int:
    """Topology edges whose both ends are relayed members."""
    return sum(placed[a] in relayed and placed[b] in relayed for a, b in edges)


graphs = st.integers(2, 6).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] != e[1]),
            max_size=12,
        ),
        st.sets(st.integers(0, n - 1)),
        st.randoms(use_true_random=False),
    )
)


@settings(max_examples=60, deadline=None)
@given(graphs)
def test_gossip_placement_puts_relayed_members_on_the_fewest_shared_edges(case) -> None:  # type: ignore[no-untyped-def]
    n, raw, picked, rng = case
    edges = sorted({(min(a, b), max(a, b)) for a, b in raw})  # a graph: each link once
    peers = [f"peer-{i}" for i in range(n)]
    relayed = {peers[i] for i in picked}
    placed = place_peers(peers, relayed, n, edges)
    assert sorted(placed) == peers
    shuffled = list(peers)
    rng.shuffle(shuffled)
    assert place_peers(shuffled, sorted(relayed), n, edges) == placed
    fewest = min(inner_edges(p, relayed, edges) for p in itertools.permutations(peers))
    assert inner_edges(placed, relayed, edges) == fewest, placed


def test_large_cohorts_are_placed_greedily_and_still_apart_on_a_ring() -> None:
    n = 40
    peers = [f"peer-{i:02d}" for i in range(n)]
    relayed = set(peers[::2][:20])
    ring = [(i, (i + 1) % n) for i in range(n)]
    placed = place_peers(peers, relayed, n, ring)
    assert sorted(placed) == peers and inner_edges(placed, relayed, ring) == 0
    with pytest.raises(LocalProtocolError):
        place_peers(peers[:-1], relayed, n, ring)


def test_push_pull_partners_over_a_relayed_link_are_drawn_less_often() -> None:
    weights = partner_weights("r1", ["d1", "r2", "d2"], {"r1", "r2"})
    assert weights == [1.0, RELAYED_PARTNER_WEIGHT, 1.0] and 0 < RELAYED_PARTNER_WEIGHT < 1
    # A direct member's links are all direct, whoever is at the other end.
    assert partner_weights("d1", ["r1", "r2"], {"r1", "r2"}) == [1.0, 1.0]


def test_push_pull_of_a_member_behind_nat_prefers_its_direct_neighbour() -> None:
    """Through ``GossipService.push_pull``: r1's neighbours on a ring are d and r2."""
    peers = ["d", "r1", "r2"]
    net = MemoryNetwork()
    topology = topologies.build("ring", 3)
    picks: list[str | None] = []
    relayed = {"r1", "r2"}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            services = {}
            for p in peers:
                transport = await nursery.start(_open, net, p)
                services[p] = GossipService(
                    transport, CONSORTIUM, peers, topology, rng=random.Random(7), relayed=relayed
                )
                services[p].set_value(np.zeros(4, np.float32))
            for t in range(200):
                picks.append(await services["r1"].push_pull(t))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    direct, relayed = picks.count("d"), picks.count("r2")
    assert direct + relayed == 200 and relayed > 0
    # Expected 4 : 1 (weights 1 and 0.25); uniform would be 1 : 1.
    assert direct > 2.5 * relayed, (direct, relayed)


async def _open(net: MemoryNetwork, name: str, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    async with net.open(name) as transport:
        task_status.started(transport)
        await trio.sleep_forever()


def test_the_daemon_derives_who_is_behind_nat_from_the_roster() -> None:
    admin = Identity.generate()
    ids = [Identity.generate() for _ in range(4)]
    members = [
        Member.from_public_key("h0", ids[0].public_key, ["/ip4/192.0.2.1/tcp/4001"]),
        Member.from_public_key("h1", ids[1].public_key, []),
        Member.from_public_key("h2", ids[2].public_key, []),
        Member.from_public_key("relay", ids[3].public_key, ["/ip4/192.0.2.9/tcp/4001"], Role.RELAY),
    ]
    expires = datetime.now(UTC) + timedelta(days=1)
    roster = Roster("consortium", 1, expires, tuple(members), (admin.public_key,))
    assert relayed_members(roster) == {ids[1].peer_id, ids[2].peer_id}


def test_the_daemon_places_gossip_members_behind_nat_apart(tmp_path: Path) -> None:
    """``build_gossip`` with a star of three: the two members behind NAT take the leaves."""
    _, prepared, recorder = demo_member(tmp_path)
    recorder.audit.close()  # not reported to here
    config = prepared.config
    prepared.config = dataclasses.replace(
        config,
        rounds=dataclasses.replace(config.rounds, mode="gossip", topology="star"),
        secagg=dataclasses.replace(config.secagg, enabled=False),
    )
    cohort = cohort_of(prepared)
    assert cohort is not None and cohort.relayed == frozenset()  # the demo lists addresses
    behind = frozenset(cohort.peers[:2])  # sorted, they would take the centre and a leaf
    cohort = dataclasses.replace(cohort, relayed=behind)
    peers: list[tuple[str, ...]] = []

    async def main() -> None:
        async with MemoryNetwork().open(prepared.identity.peer_id) as transport:
            service = build_gossip(prepared, transport, cohort, FixedPoint(), 5.0, 3)
            assert isinstance(service, GossipService) and service.relayed == behind
            peers.append(service.peers)

    trio.run(main)
    (placed,) = peers
    assert sorted(placed) == cohort.peers and placed[0] not in behind  # node 0 is the centre

"""Secure gossip against its own members: the attack of tests/gossip_attack.py, both ways.

Each test runs the curious-member attack (solve for individual updates from what one peer
sees) through the real gossip services and asserts what the attacker gets: nothing where
docs/secure-aggregation.md says secure gossip hides updates, everything it claims where the
docs say the attack succeeds (plain gossip, the old protocol, served models, coalitions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from gossip_attack import (
    GossipRun,
    OldProtocolMember,
    learned_sums,
    own_sum_rows,
    own_sums,
    received_vectors,
    run_gossip,
    served_models,
    solve,
    true_payload,
    unit_distances,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from secure_gossip_peers import run_peers, secure_service

import topologies
from p2pfed.collectives.gossip import mixing_row_and_targets
from p2pfed.collectives.secure_gossip import SecureGossipService, check_groups
from p2pfed.errors import ConfigError
from p2pfed.secagg.harness import make_identities
from p2pfed.secagg.primitives import UIntVector
from p2pfed.transport import MemoryNetwork
from p2pfed.transport.base import Transport

ROUNDS = 3
# n = 4, 5 on the default exponential graph and a 4-ring: where the issue found every update.
SMALL = [("exponential", 4), ("exponential", 5), ("ring", 4)]


def secure_run(name: str, n: int, **options: Any) -> GossipRun:
    topo = topologies.build(name, n)
    return trio.run(
        lambda: run_gossip(topo, ROUNDS, secure=True, **options),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


def plain_run(name: str, n: int) -> GossipRun:
    topo = topologies.build(name, n)
    return trio.run(
        lambda: run_gossip(topo, ROUNDS, secure=False),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


def assert_payloads_exact(run: GossipRun, recovered: dict[tuple[str, int], Any]) -> None:
    for (peer, t), payload in recovered.items():
        np.testing.assert_allclose(payload, true_payload(run, peer, t), atol=1e-3)


@pytest.mark.parametrize(("name", "n"), [*SMALL, ("ring", 5), ("exponential", 8)])
def test_one_member_isolates_no_update_from_its_group_sums(name: str, n: int) -> None:
    run = secure_run(name, n)
    for attacker in run.names:
        rows = own_sums(run, attacker)
        i = run.names.index(attacker)
        for t, row in enumerate(rows):
            # The sums really mix: each round's row weighs every in-neighbour's fresh update.
            weights, _, _ = mixing_row_and_targets(run.topology, t, i)
            for j, w in weights.items():
                assert row[run.column(run.names[j], t)] == pytest.approx(w, abs=1e-4)
        # Every member is curious (tests/gossip_attack.py: CuriousMember) and keeps whatever
        # an owner sends back; none of them can unmask another group's sum.
        assert run.learned[attacker] == []
        got = solve(run, attacker, learned_sums)
        assert got.recovered == {}
        assert min(got.distances.values()) > 0.5


@pytest.mark.parametrize(("name", "n"), SMALL)
def test_the_old_protocol_let_one_member_solve_for_every_update(name: str, n: int) -> None:
    """Before issue 12 owners also returned the masked total: members unmasked every group."""
    run = secure_run(name, n, member=OldProtocolMember)
    assert run.learned["h0"]  # sums of groups h0 does not own
    got = solve(run, "h0", learned_sums)
    assert len(got.recovered) == (n - 1) * ROUNDS
    assert_payloads_exact(run, got.recovered)


@pytest.mark.parametrize(("name", "n"), SMALL)
def test_served_models_would_give_every_update_in_one_round(name: str, n: int) -> None:
    run = secure_run(name, n)
    got = solve(run, "h0", served_models)
    assert len(got.recovered) == (n - 1) * ROUNDS
    assert_payloads_exact(run, got.recovered)


@pytest.mark.parametrize(("name", "n"), [*SMALL, ("ring", 5)])
def test_plain_gossip_hands_each_neighbour_the_first_update(name: str, n: int) -> None:
    """Plain gossip sends models in the clear: from a common start that is the update."""
    run = plain_run(name, n)
    got = solve(run, "h0", received_vectors)
    neighbours = {run.names[j] for j in mixing_row_and_targets(run.topology, 0, 0)[0]}
    assert {(p, 0) for p in neighbours} <= set(got.recovered)
    assert_payloads_exact(run, got.recovered)


def test_two_colluding_members_isolate_updates() -> None:
    """The floor is c + 2 for c = 1: a coalition of two is outside the guarantee."""
    run = secure_run("ring", 4)
    got = solve(run, ("h0", "h1"), own_sums)
    assert {p for p, _ in got.recovered} == {"h2", "h3"}
    assert_payloads_exact(run, got.recovered)


class LyingOwner(SecureGossipService):
    """An owner that drops ``victim``'s partner from S so that S holds only itself and victim."""

    hidden = "h2"

    async def _collect(
        self, instance: int, members: frozenset[str], own: UIntVector, ring_bits: int
    ) -> tuple[UIntVector, frozenset[str]]:
        collection = self._collection(instance)
        with trio.move_on_after(self.stage_timeout):
            while not members - {self.me} <= set(collection.vectors):
                await collection.arrived.wait()
        collection.vectors.pop(self.hidden, None)
        return await super()._collect(instance, members - {self.hidden}, own, ring_bits)


async def test_a_lying_owner_cannot_unmask_a_sum_of_two(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a 5-ring h1's group is {h0, h1, h2}; h1 claims h2 dropped to unmask h0's term."""
    topo = topologies.build("ring", 5)
    names = [f"h{i}" for i in range(5)]
    values = {p: np.full(4, 0.1 * (i + 1)) for i, p in enumerate(names)}
    outcomes: dict[str, Any] = {}

    def build(me: str, transport: Transport) -> SecureGossipService:
        kind = LyingOwner if me == "h1" else SecureGossipService
        return secure_service(
            me, transport, names=names, topology=topo, consortium="lying-owner", seed=5, kind=kind
        )

    async def one_round(me: str, service: SecureGossipService) -> None:
        outcomes[me] = await service.sync_round(0, values[me])

    await run_peers(names, build, one_round)
    liar = outcomes["h1"]
    # Nothing was revealed for {h0, h1}: the liar keeps its own value and learns no term.
    assert liar.contributors == {"h1"}
    np.testing.assert_array_equal(liar.vector, values["h1"])
    # The honest groups still mixed.
    assert outcomes["h3"].contributors == {"h2", "h3", "h4"}


@pytest.mark.parametrize(
    ("name", "n", "floor", "match"),
    [
        ("one_peer_exponential", 4, 3, "round 0 has 2 peers; secure gossip needs at least 3"),
        ("ring", 5, 4, "has 3 peers; secure gossip needs at least 4"),
        ("complete", 4, 2, "min_contributors must be at least 3"),
    ],
)
def test_groups_below_the_floor_are_refused_at_start(
    name: str, n: int, floor: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check_groups(topologies.build(name, n), floor)


async def test_the_service_refuses_small_groups_before_any_round() -> None:
    names = [f"h{i}" for i in range(4)]
    signers, identities = make_identities(names)
    async with MemoryNetwork().open("h0") as transport:
        with pytest.raises(ConfigError, match="needs at least 3"):
            SecureGossipService(
                transport,
                "small",
                names,
                topologies.build("one_peer_exponential", 4),
                identities,
                signers["h0"],
            )


def test_the_daemon_refuses_groups_of_two_before_the_ledger_is_touched(tmp_path: Path) -> None:
    from p2pfed.config import load_config
    from p2pfed.daemon import prepare
    from p2pfed.demo import DemoSettings, build_consortium

    config_path = (
        build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1)).hospitals[0].config
    )
    text = config_path.read_text().replace('mode = "ring"', 'mode = "gossip"')
    config_path.write_text(text.replace("[rounds]", '[rounds]\ntopology = "one_peer_exponential"'))
    config = load_config(config_path)
    assert config.secagg.enabled and config.privacy.mode != "off"
    with pytest.raises(ConfigError, match="node 0's averaging group in round 0 has 2 peers"):
        prepare(config)
    assert not config.path(config.privacy.ledger).exists()
    # The same consortium on its default exponential graph (groups of 3) is accepted.
    config_path.write_text(text)
    prepare(load_config(config_path))


@pytest.mark.parametrize("gossip", ["ring", ""])
async def test_a_member_asking_for_another_members_model(tmp_path: Path, gossip: str) -> None:
    """Secure gossip: refused (the model is the owner's secret group sum); ring: served."""
    from test_node import Consortium

    from p2pfed.node.sync import MODEL
    from p2pfed.wire import RejectedByPeer

    c = Consortium(tmp_path, 3, gossip=gossip)
    with trio.fail_after(30):
        async with c.peer(0) as owner, c.peer(1) as curious:
            owner._adopt(4, owner.weights + 0.25)  # a model only the owner holds
            status = await curious.sync.status_of(owner.me)
            assert status.round == 4  # how far it got stays visible in both modes
            fetched = await curious.sync.fetch(owner.me)
            if gossip:
                assert fetched is None
                with pytest.raises(RejectedByPeer, match="does not serve its model"):
                    await curious.sync._ask(owner.me, MODEL)
                before = curious.weights.copy()
                assert await curious.catch_up()  # it rejoins at the owner's next round …
                assert curious.next_round == 5 and curious.model_round == -1
                np.testing.assert_array_equal(curious.weights, before)  # … with its own model
            else:
                _, _, weights = await curious.sync._ask(owner.me, MODEL)
                assert weights is not None
                np.testing.assert_array_equal(weights, owner.weights)  # served …
                assert fetched is None  # … but not adopted: no commit certificate covers it


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 9),
    density=st.floats(0.5, 1.0),
    period=st.integers(1, 3),
    rounds=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_own_sums_never_isolate_an_update_on_any_graph_above_the_floor(
    n: int, density: float, period: int, rounds: int, seed: int
) -> None:
    """The row-space argument of the docs, on random (also time-varying) graphs."""
    import networkx as nx

    graphs = [nx.gnp_random_graph(n, density, seed=seed + k) for k in range(period)]
    assume(all(min(dict(g.degree()).values()) >= 2 for g in graphs))
    topo = topologies.from_graphs("random", graphs)
    check_groups(topo)  # every group holds at least 3: the floor holds
    for attacker in range(n):
        distances = [d for d, _ in unit_distances(own_sum_rows(topo, rounds, attacker))]
        assert min(distances) > 0.1


def test_own_sums_isolate_updates_below_the_floor() -> None:
    """The same solver finds the neighbour's update in a group of two (one-peer exponential)."""
    topo = topologies.build("one_peer_exponential", 4)
    with pytest.raises(ConfigError):
        check_groups(topo)
    distances = [d for d, _ in unit_distances(own_sum_rows(topo, 1, 0))]
    assert min(distances) < 1e-9

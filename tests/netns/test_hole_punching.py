"""Hole punching through real NATs: direct where the NATs allow it, named where they do not.

Three hospitals behind their own NAT routers, a relay on the public network (no proxy in
front of it, so it sees each router's public address, as a relay on the internet does).
With NATs that keep a connection's source port ("cone"), every pair of hospitals trades its
relayed circuit for a direct connection through both NATs (DCUtR, TCP simultaneous open), and
the proof is that the relay can then die without any round noticing. With NATs that pick a
random public port per connection ("symmetric"), no punch can get through: the links stay
relayed and every member's status says why. Real daemons, 20-60 s each.
"""

from __future__ import annotations

from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from p2pfed.bench._netns.consortium_nat import (
    NatConsortium,
    nat_consortium,
    spawn_relay,
    start_hospitals,
    wait_until,
)
from p2pfed.bench._netns.harness import Topology
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _hospital_links(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every member's status row for each other hospital (not the relay)."""
    return [
        row
        for s in statuses
        for name, row in (s.get("members") or {}).items()
        if name.startswith("hospital")
    ]


def _all(statuses: list[dict[str, Any]], check: Any) -> bool:
    rows = _hospital_links(statuses)
    return len(rows) == 6 and all(check(row) for row in rows)


def _start(
    topology_factory: Any, tmp_path: Path, nat: str, rounds: int
) -> tuple[NatConsortium, Topology, Popen[bytes]]:
    """Three hospitals behind ``nat`` routers, the relay on the public address, all running."""
    c = nat_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=rounds))
    topo = topology_factory(3, nat=nat)
    relay = spawn_relay(topo, c, proxied=False)
    start_hospitals(topo, c)
    return c, topo, relay


def test_behind_cone_nats_every_link_is_hole_punched_and_outlives_the_relay(
    topology_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    # Many rounds (the demo's take ~0.6 s here; 300 fit its privacy budget): the test ends
    # once it has seen enough.
    c, topo, relay = _start(topology_factory, tmp_path, "cone", rounds=300)
    punched = wait_until(
        topo,
        c,
        lambda s: _all(s, lambda row: row.get("reached") == "hole-punched"),
        120,
        "every link hole-punched",
    )
    for h in c.demo.hospitals:
        log = (topo.logs / f"{h.name}.log").read_text(errors="replace")
        assert "succeeded: the link is direct now" in log, log[-2000:]
    # Direct means direct: with the relay gone, the rounds go on with all three.
    topo.stop(relay)
    killed_after = max(s.get("completed_round", -1) for s in punched)
    seen: dict[int, dict[str, Any]] = {}  # round begun after the relay died → its report
    models: dict[int, dict[str, str]] = {}  # such a round → member → model digest after it

    def three_more(statuses: list[dict[str, Any]]) -> bool:
        for s in statuses:
            last = s.get("last") or {}
            if last.get("round", -1) > killed_after + 1:
                seen[last["round"]] = last
            if s.get("completed_round", -1) > killed_after + 1:
                models.setdefault(s["completed_round"], {})[s["name"]] = s["model_digest"]
        return len(seen) >= 3 and any(len(m) == 3 for m in models.values())

    wait_until(topo, c, three_more, 120, "three rounds without the relay")
    assert all(last.get("contributors") == 3 for last in seen.values()), seen
    agreed = [m for m in models.values() if len(m) == 3]
    assert all(len(set(m.values())) == 1 for m in agreed), models
    final = [read_status(h.state) or {} for h in c.demo.hospitals]
    assert _all(final, lambda row: row.get("reached") == "hole-punched"), final


def test_behind_symmetric_nats_links_stay_relayed_and_status_says_why(
    topology_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    c, topo, _relay = _start(topology_factory, tmp_path, "symmetric", rounds=200)
    # A punch gives up after three dial rounds (~20 s); the consortium trains meanwhile.
    statuses = wait_until(
        topo,
        c,
        lambda s: _all(s, lambda row: row.get("reached") == "relayed" and row.get("hole_punch")),
        150,
        "every link relayed with the hole punch's failure named",
    )
    for row in _hospital_links(statuses):
        assert "no direct connection after dialling its addresses" in row["hole_punch"], row
        # It dialled the peer's NAT at the port the peer listens on: the one a cone NAT keeps.
        assert "/ip4/198.51.100.1" in row["hole_punch"] and "/tcp/4001" in row["hole_punch"], row
    assert all(s.get("completed_round", -1) >= 0 for s in statuses), statuses

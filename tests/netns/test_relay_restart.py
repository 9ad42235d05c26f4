"""The relay dies mid-training: direct links survive, relayed ones drop and come back.

Three hospitals: hospital-a has a public address (no NAT, listed in the roster), b and c
sit behind NAT. a↔b and a↔c are direct (b and c dial out to a); b↔c goes through the
relay. After round 1 the relay process is killed: a still has both others connected
directly and b and c still have a, but b and c lose each other (named in status), and a
secure round, which needs all three here, waits. The relay is started again (same key,
same address); b and c re-reserve, redial through it and every member finishes every
round with one model, the pairs still reached as before; a, whose public address the others
dialled back, is told it is dialable. Real daemons for 75 s on an idle machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2pfed.bench._netns.consortium_nat import (
    nat_consortium,
    spawn_relay,
    start_hospitals,
    start_relay,
    wait_until,
)
from p2pfed.demo import DemoSettings

pytestmark = [pytest.mark.network, pytest.mark.slow]
ROUNDS = 8  # rounds take ~5 s here: the relay must die before they end
DIRECT = {("hospital-a", "hospital-b"), ("hospital-a", "hospital-c")}


def links(statuses: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[bool, str | None]]:
    """(member, other hospital) → (connected now, how it is reached), from each status."""
    return {
        (s["name"], other): (bool(row.get("connected")), row.get("reached"))
        for s in statuses
        if "name" in s
        for other, row in (s.get("members") or {}).items()
        if other.startswith("hospital")
    }


def expected(pair: tuple[str, str]) -> str:
    return "direct" if tuple(sorted(pair)) in DIRECT else "relayed"


def test_the_relay_dies_direct_links_survive_relayed_ones_return_with_it(
    topology_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    topo = topology_factory(3, public=(1,))
    c = nat_consortium(
        tmp_path / "demo", DemoSettings(peers=3, rounds=ROUNDS), public={1: topo.hospital_ip(1)}
    )
    relay = start_relay(topo, c, one_way=0.01, rate=12.5e6)
    start_hospitals(topo, c)

    def all_linked(statuses: list[dict[str, Any]]) -> bool:
        now = links(statuses)
        return len(now) == 6 and all(on and how == expected(p) for p, (on, how) in now.items())

    wait_until(topo, c, lambda s: all(x.get("completed_round", -1) >= 1 for x in s), 180, "round 1")
    wait_until(topo, c, all_linked, 60, "every pair linked as the roster allows")
    topo.stop(relay)  # the relay dies mid-training

    def relayed_dropped(statuses: list[dict[str, Any]]) -> bool:
        now = links(statuses)
        return len(now) == 6 and not any(now[p][0] for p in now if expected(p) == "relayed")

    dropped = wait_until(topo, c, relayed_dropped, 120, "the relayed pair dropping")
    assert all(s.get("state") != "finished" for s in dropped), "training outran the relay's death"
    survived = links(dropped)
    direct = [p for p in survived if expected(p) == "direct"]
    assert all(survived[p] == (True, "direct") for p in direct), survived
    stalled_at = max(s["completed_round"] for s in dropped)
    spawn_relay(topo, c, "relay-again")  # back, same key and address
    final = wait_until(
        topo, c, lambda s: all(x.get("state") == "finished" for x in s), 360, "all finished"
    )
    assert {s["completed_round"] for s in final} == {ROUNDS - 1}
    assert stalled_at < ROUNDS - 1
    assert len({s["model_digest"] for s in final}) == 1
    after = links(final)
    assert len(after) == 6 and all(how == expected(p) for p, (_, how) in after.items()), after
    told = next(s["reachability"] for s in final if s["name"] == "hospital-a")
    assert told["state"] == "dialable", told

"""No silent partition: members that cannot reach each other say which pair and why.

Three hospitals behind NAT list no address and their relay is down: every daemon's status
names each other member as unreachable, with the direct and the relayed reason, and its
log and audit log say so. Slow: about 20-30 s (real daemons in network namespaces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pfed.bench._netns.consortium_nat import nat_consortium, start_hospitals, wait_until
from p2pfed.demo import DemoSettings

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _all_named(statuses: list[dict]) -> bool:  # type: ignore[type-arg]
    rows = [
        row
        for s in statuses
        for name, row in (s.get("members") or {}).items()
        if name.startswith("hospital")
    ]
    return len(rows) == 6 and all(row.get("unreachable") for row in rows)


def test_unreachable_pairs_are_named_with_the_reason(topology_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = nat_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=3))
    topo = topology_factory(3)  # the relay namespace exists, the relay is not started
    start_hospitals(topo, c)
    final = wait_until(topo, c, _all_named, 120, "every pair reported unreachable")
    for s in final:
        assert s["state"] != "finished"
        for name, row in s["members"].items():
            if not name.startswith("hospital"):
                continue
            why = row["unreachable"]
            assert "no address is known" in why, why
            assert c.relay_id in why and "relayed" in why, why
            assert row["connected"] is False and row["reached"] is None
    for h in c.demo.hospitals:
        log = (topo.logs / f"{h.name}.log").read_text(errors="replace")
        assert "cannot reach member" in log and "relay" in log
        # The audit log names each pair too: one signed entry per member it cannot reach.
        entries = [json.loads(x) for x in (h.state / "audit.jsonl").read_text().splitlines()]
        pairs = [e["body"] for e in entries if e["kind"] == "unreachable"]
        assert len({b["peer"] for b in pairs}) == 2, pairs
        assert all("relayed:" in b["reason"] for b in pairs), pairs

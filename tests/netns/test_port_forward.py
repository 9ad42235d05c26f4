"""Port forwards through real NAT: dial-back says which one works, and rounds go on either way.

Three hospitals behind NAT routers and a relay. hospital-a's router forwards public port 4001
to its daemon, and the roster lists that public address; hospital-b's router forwards 4002 to
port 4002 on its host, where nothing listens (the daemon listens on 4001), and the roster lists
router-b:4002: a port forward to the wrong port. hospital-c lists nothing. Other members dial
each listed address back on a fresh connection (``transport.dialback``): a is told it is
dialable, b that it is not, with the reason and the advice `p2pfed status` prints; a secure
round needs all three, and every round commits with one model (b is reached through the relay
or by its own dials out).
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from p2pfed.bench._netns.consortium_nat import (
    PUBLIC_PORT,
    nat_consortium,
    start_hospitals,
    start_relay,
    wait_until,
)
from p2pfed.bench._netns.harness import Topology
from p2pfed.cli import main
from p2pfed.demo import DemoSettings
from p2pfed.transport.dialback import OK

pytestmark = [pytest.mark.network, pytest.mark.slow]
WRONG_PORT = 4002


def reachability(statuses: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((s.get("reachability") or {} for s in statuses if s.get("name") == name), {})


def test_a_working_and_a_wrong_port_forward_are_told_apart_and_rounds_commit(
    topology_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    topo = topology_factory(
        3, forwards={1: (PUBLIC_PORT, PUBLIC_PORT), 2: (WRONG_PORT, WRONG_PORT)}
    )
    right = f"/ip4/{Topology.router_ip(1)}/tcp/{PUBLIC_PORT}"
    wrong = f"/ip4/{Topology.router_ip(2)}/tcp/{WRONG_PORT}"
    c = nat_consortium(
        tmp_path / "demo",
        DemoSettings(peers=3, rounds=4),
        public={1: Topology.router_ip(1), 2: f"{Topology.router_ip(2)}:{WRONG_PORT}"},
    )
    start_relay(topo, c, one_way=0.005, rate=12.5e6)
    start_hospitals(topo, c)
    a, b, _ = (h.name for h in c.demo.hospitals)

    def both_checked(statuses: list[dict[str, Any]]) -> bool:
        return all(reachability(statuses, n).get("state", "unknown") != "unknown" for n in (a, b))

    checked = wait_until(topo, c, both_checked, 120, "both listed members checked")
    told_a, told_b = reachability(checked, a), reachability(checked, b)
    assert told_a["state"] == "dialable", told_a
    assert OK in told_a["addresses"][right].values(), told_a
    assert told_b["state"] == "not dialable", told_b
    reasons = told_b["addresses"][wrong]
    assert reasons and all("refused" in why for why in reasons.values()), told_b

    final = wait_until(
        topo, c, lambda s: all(x.get("state") == "finished" for x in s), 240, "all finished"
    )
    assert {s["completed_round"] for s in final} == {3}
    assert len({s["model_digest"] for s in final}) == 1

    shown = io.StringIO()
    with redirect_stdout(shown):
        assert main(["status", "--config", str(c.demo.hospitals[1].config)]) == 0
    assert f"NO ({wrong}:" in shown.getvalue(), shown.getvalue()
    assert "check the port forwarding" in shown.getvalue()

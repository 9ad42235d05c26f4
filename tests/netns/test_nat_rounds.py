"""Secure rounds between hospitals that are all behind NAT, through a relay at 40 ms RTT.

Slow: about 60-90 s on two loaded cores (real daemons in network namespaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfed.demo import DemoSettings
from tests.netns.consortium_nat import nat_consortium, start_hospitals, start_relay, wait_until

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_hospitals_behind_nat_complete_secure_rounds_through_the_relay(
    topology_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    c = nat_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=3))
    topo = topology_factory(3)
    start_relay(topo, c, one_way=0.01, rate=12.5e6)  # 40 ms RTT between hospitals, 100 Mbit/s
    start_hospitals(topo, c)
    final = wait_until(
        topo, c, lambda s: all(x.get("state") == "finished" for x in s), 240, "all finished"
    )
    assert {s["completed_round"] for s in final} == {2}
    assert len({s["model_digest"] for s in final}) == 1
    for status in final:
        others = [row for name, row in status["members"].items() if name.startswith("hospital")]
        assert others and all(row["reached"] == "relayed" for row in others), status["members"]
        # The relay is a direct connection; every stream to a hospital crossed it.
        assert all(row["open_s"] >= 0.04 for row in others), status["members"]

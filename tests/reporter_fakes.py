"""What the daemon's RoundReporter reads of a peer and a transport; a member to report for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from p2pfed.config import load_config
from p2pfed.daemon import open_governance, prepare
from p2pfed.daemon.prepare import Prepared
from p2pfed.demo import DemoConsortium, DemoSettings, build_consortium
from p2pfed.governance.recorder import GovernanceRecorder
from p2pfed.transport.ratelimit import StreamLimiter


@dataclasses.dataclass
class FakePeer:
    """What the reporter reads of a peer."""

    weights: np.ndarray
    model_round: int = -1
    bytes_sent: int = 0
    epsilon: float | None = None


@dataclasses.dataclass
class FakeTransport:
    """What the reporter reads of the transport."""

    connected: tuple[str, ...] = ("a", "b")
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/4001",)
    limiter: StreamLimiter = dataclasses.field(default_factory=StreamLimiter)

    def connected_peers(self) -> list[str]:
        return list(self.connected)


def demo_member(tmp_path: Path) -> tuple[DemoConsortium, Prepared, GovernanceRecorder]:
    """The first member of a 3-member demo consortium, prepared, with its governance open."""
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=2))
    prepared = prepare(load_config(c.hospitals[0].config))
    return c, prepared, open_governance(prepared, prepared.gate.roster.consortium_id, 2)

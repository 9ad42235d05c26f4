"""Real ``p2pfed run`` daemons behind NAT, a ``p2pfed relay`` behind a WAN-like proxy.

Theory of operation: ``p2pfed.demo.build_consortium`` makes the demo's folders (keys,
data, configs); ``nat_consortium`` then re-signs the roster so that no hospital lists an
address (nobody can dial into a NAT) and a relay entry (role ``relay``) lists the public
address ``198.51.100.2:4001``. There a delay/bandwidth proxy (``proxy.py``) forwards to the
relay on the relay namespace's loopback, so every relayed hop crosses the proxy twice: with
``one_way`` seconds per pass, two hospitals see a round trip of 4 × ``one_way``. Each daemon
runs in its hospital's namespace, listening on 0.0.0.0:4001.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from subprocess import Popen
from typing import Any

from p2pfed.bench._netns.harness import RELAY_IP, Topology
from p2pfed.demo import DemoConsortium, DemoSettings, build_consortium
from p2pfed.governance.status_file import read_status
from p2pfed.identity import Identity, Member, Role, Roster

PUBLIC_PORT = 4001
RELAY_PORT = 4002  # the relay itself, on the relay namespace's loopback behind the proxy


@dataclass
class NatConsortium:
    demo: DemoConsortium
    relay_key: Path
    relay_id: str


def nat_consortium(
    root: Path,
    settings: DemoSettings,
    stage_floor_s: float | None = None,
    public: dict[int, str] | None = None,
) -> NatConsortium:
    """The demo consortium with no hospital address and one relay in the roster.

    ``stage_floor_s`` sets every hospital's ``[rounds] stage_timeout_min_s`` (the agreement's
    waits and control timeouts stretch with it, ``SecureRingRound.pace``). ``public``: hospital
    number (from 1) → the public "IP" (port ``PUBLIC_PORT``) or "IP:port" the roster lists for
    it (``Topology.hospital_ip``, or its router's for a port forward).
    """
    public = public or {}
    demo = build_consortium(root, settings)
    admin = Identity.load(root / "admin.key")
    relay = Identity.generate()
    relay.save(root / "relay.key")
    old = Roster.load(demo.hospitals[0].folder / "roster.json")
    listed = {h.name: public[i] for i, h in enumerate(demo.hospitals, start=1) if i in public}

    def addresses(name: str) -> tuple[str, ...]:
        if name not in listed:
            return ()
        ip, _, port = listed[name].partition(":")
        return (f"/ip4/{ip}/tcp/{port or PUBLIC_PORT}",)

    members = [replace(m, addresses=addresses(m.name)) for m in old.members]
    members.append(
        Member.from_public_key(
            "relay", relay.public_key, [f"/ip4/{RELAY_IP}/tcp/{PUBLIC_PORT}"], Role.RELAY
        )
    )
    roster = replace(old, members=tuple(members), signatures=()).signed_by(admin)
    roster.save(root / "roster.json")
    for h in demo.hospitals:
        roster.save(h.folder / "roster.json")
        text = h.config.read_text().replace(f"/ip4/127.0.0.1/tcp/{h.port}", "/ip4/0.0.0.0/tcp/4001")
        if stage_floor_s is not None:
            text = text.replace("[rounds]\n", f"[rounds]\nstage_timeout_min_s = {stage_floor_s}\n")
        h.config.write_text(text)
    return NatConsortium(demo, root / "relay.key", relay.peer_id)


def spawn_relay(
    topo: Topology, c: NatConsortium, name: str = "relay", proxied: bool = True
) -> Popen[bytes]:
    """``p2pfed relay`` in the relay namespace; waits until it listens.

    ``proxied``: on the namespace's loopback, for the proxy in front of it (which hides the
    members' public addresses from it); else on the public address itself.
    """
    root = c.demo.root
    argv = [sys.executable, "-m", "p2pfed", "relay", "--key", str(c.relay_key)]
    argv += ["--roster", str(root / "roster.json"), "--state", str(root / "relay-state")]
    listen = f"/ip4/127.0.0.1/tcp/{RELAY_PORT}" if proxied else f"/ip4/{RELAY_IP}/tcp/{PUBLIC_PORT}"
    relay = topo.spawn(topo.relay, [*argv, "--listen", listen], name)
    topo.wait_for_text(name, "listening on", 60, relay)
    return relay


def start_relay(topo: Topology, c: NatConsortium, one_way: float, rate: float) -> Popen[bytes]:
    """The relay and, in front of it, the proxy with ``one_way`` delay and ``rate`` B/s."""
    relay = spawn_relay(topo, c)
    proxy = topo.python(
        topo.relay,
        "proxy.py",
        "--listen",
        f"{RELAY_IP}:{PUBLIC_PORT}",
        "--to",
        f"127.0.0.1:{RELAY_PORT}",
        "--delay",
        str(one_way),
        "--rate",
        str(rate),
        name="proxy",
    )
    topo.wait_for_text("proxy", "listening", 30, proxy)
    return relay


def start_hospitals(topo: Topology, c: NatConsortium) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for i, h in enumerate(c.demo.hospitals, start=1):
        h.process = topo.spawn(
            topo.hospital(i),
            [sys.executable, "-m", "p2pfed", "run", "--config", str(h.config)],
            h.name,
            env=env,
            cwd=h.folder,
        )


def wait_until(
    topo: Topology, c: NatConsortium, done: Any, timeout: float, what: str
) -> list[dict[str, Any]]:
    """Poll every hospital's status until ``done(statuses)``; fail naming the logs' tails."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = [read_status(h.state) or {} for h in c.demo.hospitals]
        if done(statuses):
            return statuses
        dead = [h.name for h in c.demo.hospitals if h.process and h.process.poll() not in (None, 0)]
        if dead or time.monotonic() > deadline:
            tails = {
                h.name: (topo.logs / f"{h.name}.log").read_text(errors="replace")[-1500:]
                for h in c.demo.hospitals
            }
            relay = (topo.logs / "relay.log").read_text(errors="replace")[-1500:]
            raise AssertionError(
                f"{what}: not reached in {timeout} s (exited: {dead}); statuses "
                f"{json.dumps([(s.get('state'), s.get('completed_round')) for s in statuses])}"
                f"\nrelay log: {relay}\nlogs: {json.dumps(tails, indent=1)}"
            )
        time.sleep(0.2)

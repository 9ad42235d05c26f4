"""Live revocation over real daemons on 127.0.0.1: a roster given to one member only."""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pfed.consortium import Hospital, launch, stop
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import ReasonCode, RemoteProtocolError
from p2pfed.identity import Identity, Roster
from p2pfed.node.roster_sync import ROSTER_PROTOCOL
from p2pfed.transport.libp2p import Libp2pTransport

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROUND_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll ``predicate`` until true; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - start


def status(h: Hospital) -> dict[str, Any]:
    try:
        return read_status(h.state) or {}
    except Exception:
        return {}  # being replaced right now


async def dial_as(identity: Identity, targets: dict[str, str]) -> dict[str, str]:
    """What the revoked member gets when it dials each target: the error's reason code."""
    outcome = {}
    async with Libp2pTransport(identity.seed, lambda _: True, connect_timeout=5) as t:
        for peer, addr in targets.items():
            t.set_peer_addrs(peer, [addr])
            try:
                stream = await t.open_stream(peer, ROSTER_PROTOCOL)
                await stream.aclose()
                outcome[peer] = "admitted"
            except RemoteProtocolError as exc:
                outcome[peer] = exc.reason.value
    return outcome


@pytest.mark.timeout(240)
def test_a_roster_given_to_one_peer_revokes_a_member_at_every_peer_within_a_round(
    tmp_path: Path,
) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=4, rounds=8))
    for h in c.hospitals:  # shorter deadlines keep it quick; 30 s still suits a loaded machine
        text = h.config.read_text()
        h.config.write_text(
            text.replace("round_timeout_s = 60.0", f"round_timeout_s = {ROUND_TIMEOUT}")
        )
    *rest, revoked = c.hospitals
    admin = Identity.load(c.root / "admin.key")
    v2 = Roster.load(rest[0].folder / "roster.json").without_member(revoked.name)
    v2 = v2.signed_by(admin)
    try:
        launch(c)
        wait_for(
            lambda: all(status(h).get("completed_round", -1) >= 0 for h in c.hospitals),
            "round 0 at every daemon",
            timeout=120,
        )
        before = max(status(h)["completed_round"] for h in c.hospitals)
        v2.save(rest[0].folder / "roster.json")  # one member only
        took = wait_for(
            lambda: all(status(h).get("roster_version") == 2 for h in rest),
            "roster version 2 at the remaining members",
            timeout=ROUND_TIMEOUT,
        )
        # Rounds the remaining members had completed when the change reached them all: a
        # round begun before then could still include the revoked member (members switch
        # version at a round boundary), none begun after.
        reached = max(status(h).get("completed_round", -1) for h in rest)
        # Its next dial fails at every remaining member: refused after the handshake.
        targets = {h.identity.peer_id: f"/ip4/127.0.0.1/tcp/{h.port}" for h in rest}
        refused = trio.run(dial_as, revoked.identity, targets)
        assert refused == {pid: ReasonCode.UNKNOWN_PEER.value for pid in targets}
        # Training continues without it: the three commit two more rounds after the change
        # reached them all (so the last report holds no message it sent before the cut-off).
        wait_for(
            lambda: all(status(h).get("completed_round", -1) >= reached + 2 for h in rest),
            "two more rounds at the remaining members",
            timeout=120,
        )
        final_revoked = status(revoked).get("completed_round", -1)
        final = {h.name: status(h) for h in rest}
        # Given the new roster too, the revoked member's daemon stops and says why.
        v2.save(revoked.folder / "roster.json")
        process = revoked.process
        assert process is not None
        wait_for(lambda: process.poll() is not None, "the revoked daemon to stop", 30)
        assert process.returncode == 0
        assert status(revoked)["stop_reason"] == "removed in roster version 2"
    finally:
        stop(c)
    # The revoked member completed no round begun after the change reached the others.
    assert final_revoked <= reached + 1, (final_revoked, before, reached)
    for h in rest:
        log = (h.folder / "daemon.log").read_text(errors="replace")
        assert "accepted roster version 2" in log
        entries = [json.loads(line) for line in (h.state / "audit.jsonl").read_text().splitlines()]
        changes = [e["body"] for e in entries if e["kind"] == "roster_change"]
        assert len(changes) == 1 and changes[0]["old_version"] == 1
        assert changes[0]["new_version"] == 2 and len(changes[0]["removed"]) == 1
        assert changes[0]["added"] == []
        assert Roster.load(h.folder / "roster.json").digest() == v2.digest()
        # The cohort was rebuilt: rounds after the change run under version 2 (a new secure
        # aggregation session over the three), and the revoked member is not even excluded.
        # A round's entry is written when it ends: the one round under way when the change
        # arrived may end (and be audited) just after it, under version 1, and no other.
        after = entries[entries.index(next(e for e in entries if e["kind"] == "roster_change")) :]
        versions = [e["body"]["roster_version"] for e in after if e["kind"] == "round_start"]
        assert versions and versions[-1] == 2, versions
        assert versions.count(1) <= 1 and versions == sorted(versions), versions
        assert revoked.identity.peer_id not in " ".join(final[h.name].get("exclusions", []))
    compare = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2pfed",
            "audit",
            "compare",
            "--roster",
            str(rest[0].folder / "roster.json"),
        ]
        + [str(h.state / "audit.jsonl") for h in rest],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "OK: 3 logs agree" in compare.stdout
    print(f"roster v2 in force at all three remaining members {took:.1f} s after the write")

"""No unreported unreachable pair: the relay refuses a circuit, and the audit log says so.

In-process on 127.0.0.1: a member of the demo consortium knows no address for another
member (behind NAT) and the roster's relay refuses the circuit to it (the relay's roster
lacks it). The member's daemon reporter then writes one signed ``unreachable`` audit entry
naming the pair (the signer and the other member's salted hash) and the reason, with every
peer ID hashed, and ``p2pfed status`` shows the pair and the reason. Slow: ~15 s at load 14.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import trio

from p2pfed.cli import main
from p2pfed.daemon import RoundReporter, read_status
from p2pfed.errors import BrokenError
from p2pfed.governance.audit import hash_peer_id, verify_log
from p2pfed.node.liveness import Waiting
from p2pfed.training import ParameterLayout
from p2pfed.transport.libp2p_relayed import RelayedTransport
from p2pfed.transport.relay import serve_relay
from tests.reporter_fakes import FakePeer, demo_member

pytestmark = [pytest.mark.network, pytest.mark.slow]


async def test_a_pair_the_relay_refuses_is_audited_and_shown_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, prepared, recorder = demo_member(tmp_path)
    me = prepared.identity
    other = c.hospitals[1]
    roster_ids = {m.peer_id for m in prepared.gate.roster.members}
    relay_seed = hashlib.sha256(b"unreachable-audit/relay").digest()
    relay_id = RelayedTransport(relay_seed, lambda _: True).local_peer
    relay_admits = {relay_id, me.peer_id}.__contains__  # its roster lacks the other member
    async with AsyncExitStack() as stack:
        relay_t = await stack.enter_async_context(RelayedTransport(relay_seed, relay_admits))
        relay = await stack.enter_async_context(serve_relay(relay_t, relay_admits))
        mine = RelayedTransport(
            me.seed,
            (roster_ids | {relay_id}).__contains__,
            relays={relay_id: list(relay_t.listen_addrs)},
        )
        await stack.enter_async_context(mine)
        client = mine.relay_client
        assert client is not None
        with trio.fail_after(30):
            while relay_id not in client.reserved:
                await trio.sleep(0.02)
        with pytest.raises(BrokenError, match="unreachable"):
            await mine.open_stream(other.identity.peer_id, "/p2pfed/test/1")
        assert other.identity.peer_id in relay.refused  # refused at the relay, not lost

        status: dict[str, object] = {"state": "starting"}
        layout = ParameterLayout(("w",), ((2,),))
        reporter = RoundReporter(prepared, status, recorder, None, layout)
        reporter.running(FakePeer(np.zeros(2, np.float32)), mine, prepared.gate.roster.version)  # type: ignore[arg-type]
        # Still unreachable at the next status update: the same outage, not a second entry.
        reporter.waiting(Waiting(0, "too few members", (other.identity.peer_id,), 5.0), now=1.0)
    recorder.stop(reason="finished")

    audit = prepared.state_dir / "audit.jsonl"
    assert verify_log(audit).ok
    text = audit.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    pairs = [e for e in entries if e["kind"] == "unreachable"]
    assert len(pairs) == 1, pairs
    (entry,) = pairs
    assert entry["signer"] == me.peer_id  # one end of the pair
    assert entry["body"]["peer"] == hash_peer_id(prepared.audit_salt, other.identity.peer_id)
    reason = entry["body"]["reason"]
    assert "direct:" in reason and "no address is known" in reason and "relayed:" in reason
    assert hash_peer_id(prepared.audit_salt, relay_id) in reason  # the relay that refused
    for raw in (other.identity.peer_id, relay_id):  # peer IDs only as salted hashes
        assert raw not in text

    row = (read_status(prepared.state_dir) or {})["members"][other.name]
    assert row["reached"] is None and "relayed:" in row["unreachable"]
    capsys.readouterr()
    assert main(["status", "--config", str(c.hospitals[0].config)]) == 0
    shown = capsys.readouterr().out
    line = next(x for x in shown.splitlines() if x.strip().startswith(other.name))
    assert "unreachable: direct:" in line and "relayed:" in line, shown

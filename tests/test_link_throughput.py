"""A link's throughput is measured from real traffic and said in status and the audit log.

On 127.0.0.1 a member of the demo consortium reaches another through a userspace proxy that
caps each direction at 40 Mbit/s (``p2pfed.bench._netns.proxy``; this kernel has no netem).
Before any transfer the link is audited as ``direct`` with no throughput (none measured);
after the other member sent 8 MiB, ``links()``, ``status.json`` and ``p2pfed status`` give
the rate within the cap's neighbourhood and one more signed ``link`` entry records it; a
further status update with nothing new writes no entry. Slow: ~5 s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import trio
from transport_harness import echo

from p2pfed.cli import main
from p2pfed.daemon import RoundReporter, read_status
from p2pfed.governance.audit import hash_peer_id, verify_log
from p2pfed.node.liveness import Waiting
from p2pfed.training import ParameterLayout
from p2pfed.transport.base import Stream
from p2pfed.transport.libp2p_relayed import RelayedTransport
from tests.reporter_fakes import FakePeer, demo_member

pytestmark = [pytest.mark.network, pytest.mark.slow]

CAP_MBPS = 40.0
SENT = 8 << 20
SOURCE = "/test/source/1"


async def source(stream: Stream) -> None:
    """Sends ``SENT`` bytes, then ends the stream."""
    await stream.receive_some(16)
    await stream.send_all(bytes(SENT))
    await stream.send_eof()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def shaping_proxy(stack: AsyncExitStack, to: str, one_way_s: float) -> str:
    """A proxy in front of ``to`` (a multiaddr); returns the proxy's multiaddr once it listens."""
    _, _, host, _, port = to.split("/")
    listen = free_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "p2pfed.bench._netns.proxy", "--listen", f"127.0.0.1:{listen}",
         "--to", f"{host}:{port}", "--delay", str(one_way_s), "--rate", str(CAP_MBPS * 1e6 / 8)],
        stdout=subprocess.PIPE,
    )  # fmt: skip

    async def stop() -> None:
        proc.kill()
        await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()

    stack.push_async_callback(stop)
    assert proc.stdout is not None
    with trio.fail_after(30):
        assert (await proc.stdout.receive_some(64)).startswith(b"listening")
    return f"/ip4/127.0.0.1/tcp/{listen}"


async def test_a_shaped_link_is_measured_near_its_cap_and_audited_when_first_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, prepared, recorder = demo_member(tmp_path)
    me, other = prepared.identity, c.hospitals[1]
    other_id = other.identity.peer_id
    admitted = {m.peer_id for m in prepared.gate.roster.members}.__contains__
    async with AsyncExitStack() as stack:
        theirs = RelayedTransport(other.identity.seed, admitted)
        theirs.serve("/test/echo/1", echo)
        theirs.serve(SOURCE, source)
        await stack.enter_async_context(theirs)
        proxy = await shaping_proxy(stack, theirs.listen_addrs[0], one_way_s=0.002)
        mine = await stack.enter_async_context(
            RelayedTransport(me.seed, admitted, peer_addrs={other_id: [proxy]})
        )
        stream = await mine.open_stream(other_id, "/test/echo/1")
        await stream.send_all(b"hello")
        assert await stream.receive_exactly(10) == b"echo:hello"
        await stream.aclose()

        status: dict[str, object] = {"state": "starting"}
        reporter = RoundReporter(prepared, status, recorder, None, ParameterLayout(("w",), ((2,),)))
        reporter.running(FakePeer(np.zeros(2, np.float32)), mine, prepared.gate.roster.version)  # type: ignore[arg-type]
        assert mine.links()[other_id]["throughput_mbps"] is None  # a handshake is no transfer

        stream = await mine.open_stream(other_id, SOURCE)
        await stream.send_all(b"go")
        got, start = 0, trio.current_time()
        while chunk := await stream.receive_some(1 << 20):
            got += len(chunk)
        elapsed = trio.current_time() - start
        await stream.aclose()
        assert got == SENT
        measured = mine.links()[other_id]["throughput_mbps"]
        end_to_end = SENT * 8 / 1e6 / elapsed
        # The proxy paces at the cap; the meter counts only the transfer's own time.
        assert 0.6 * CAP_MBPS < measured < 1.15 * CAP_MBPS, (measured, end_to_end)
        assert measured >= 0.9 * end_to_end, (measured, end_to_end)

        reporter.waiting(Waiting(0, "too few members", (), 5.0), now=1.0)
        reporter.waiting(Waiting(0, "too few members", (), 5.0), now=2.0)  # nothing new
    recorder.stop(reason="finished")

    audit = prepared.state_dir / "audit.jsonl"
    assert verify_log(audit).ok
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    peer = hash_peer_id(prepared.audit_salt, other_id)
    links = [e["body"] for e in entries if e["kind"] == "link" and e["body"]["peer"] == peer]
    assert [(b["via"], b["throughput_mbps"]) for b in links] == [
        ("direct", None), ("direct", measured)
    ]  # fmt: skip
    assert other_id not in audit.read_text()  # the peer only as its salted hash

    row = (read_status(prepared.state_dir) or {})["members"][other.name]
    assert row["reached"] == "direct" and row["throughput_mbps"] == measured
    capsys.readouterr()
    assert main(["status", "--config", str(c.hospitals[0].config)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith(other.name))
    assert f"receiving {measured:.1f} Mbit/s" in line, line

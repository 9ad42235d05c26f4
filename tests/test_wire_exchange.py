"""Short stream exchanges (``p2pfed.wire.exchange``): dial with backoff, one frame by a deadline.

The deadline is proven by the attack it stops: a member trickling a commit vote one byte
at a time, each byte just inside the per-read timeout, to hold a ``CertificateService``
handler open.
"""

from __future__ import annotations

import trio

from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import BrokenError, ClosedError, ReasonCode, RemoteProtocolError
from p2pfed.identity import Identity
from p2pfed.node.certificates import CertificatePolicy, CommitStatement
from p2pfed.node.certify import CERT_PROTOCOL, CertificateService
from p2pfed.transport import MemoryNetwork
from p2pfed.transport.base import Stream
from p2pfed.wire import Frame, FrameType, encode_frame
from p2pfed.wire.exchange import (
    FIRST_PAUSE,
    MAX_PAUSE,
    finish_sending,
    open_with_backoff,
    read_one_frame,
)

IDS = [Identity.from_seed(bytes([k + 1]) * 32) for k in range(2)]
KEYS = {i.peer_id: i.public_key for i in IDS}
VICTIM, MEMBER = (i.peer_id for i in IDS)
SIGNERS = {i.peer_id: Ed25519CohortSigner(i.seed, KEYS) for i in IDS}


async def test_a_vote_trickled_byte_by_byte_is_cut_off_at_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Each byte comes 1.5 s after the last (the per-read timeout is 2 s), so only a deadline
    for the whole frame ends the handler: at 2 s, after two bytes, not after 200+ s."""
    policy = CertificatePolicy("c", 1, frozenset(KEYS), SIGNERS[VICTIM], 1)
    statement = CommitStatement("c", 1, 3, b"\x01" * 32, tuple(sorted(KEYS)))
    payload = statement.encode() + SIGNERS[MEMBER].sign(statement.signed_bytes())
    data = encode_frame(Frame(FrameType.CONTROL, "c", 3, MEMBER, 0, payload))
    net = MemoryNetwork()
    async with net.open(VICTIM) as victim, net.open(MEMBER) as member:
        CertificateService(victim, policy, SIGNERS[VICTIM], timeout=2.0)
        stream = await member.open_stream(VICTIM, CERT_PROTOCOL)
        start = trio.current_time()
        sent = 0
        try:
            for byte in data:
                await stream.send_all(bytes([byte]))
                sent += 1
                await trio.sleep(1.5)
            await stream.receive_some()  # the handler closes after reading its frame
        except (BrokenError, ClosedError):
            pass
        held = trio.current_time() - start
        await stream.aclose()
    assert len(data) > 100
    assert sent <= 3, f"the handler read {sent} trickled bytes"
    assert held <= 2.0 + 1.5, f"the trickle held the handler for {held:g} s"


async def test_a_frame_of_another_type_is_a_protocol_violation_naming_the_peer() -> None:
    net = MemoryNetwork()
    errors: list[Exception] = []

    async def handler(stream: Stream) -> None:
        try:
            await read_one_frame(stream, timeout=5.0)
        except RemoteProtocolError as exc:
            errors.append(exc)

    async with net.open("a") as a, net.open("b") as b:
        b.serve("/t", handler)
        stream = await a.open_stream("b", "/t")
        await stream.send_all(encode_frame(Frame(FrameType.HELLO, "c", 1, "a", 0, b"x")))
        await finish_sending(stream)
    assert len(errors) == 1 and isinstance(errors[0], RemoteProtocolError)
    assert errors[0].reason is ReasonCode.PROTOCOL_VIOLATION and errors[0].peer == "a"
    assert "HELLO frame where a CONTROL frame was due" in str(errors[0])


async def test_a_refused_dial_is_retried_with_doubling_pauses_until_served(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:

        async def handler(stream: Stream) -> None:
            await stream.send_all(b"hi")

        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def serve_later() -> None:
                await trio.sleep(3.0)
                b.serve("/late", handler)

            nursery.start_soon(serve_later)
            stream = await open_with_backoff(a, "b", "/late")
        took = trio.current_time() - start
        async with stream:
            assert await stream.receive_some() == b"hi"
    # Pauses 0.05, 0.1, 0.2, 0.4, 0.8, then 1 s each: the first dial after 3 s is at 3.55 s.
    assert FIRST_PAUSE == 0.05 and MAX_PAUSE == 1.0
    assert 3.0 <= took <= 3.0 + MAX_PAUSE

"""Bounded, cheap refusal on the round-control protocol, shown by floods that fail.

Cheapness is asserted as work, not time: a flooder's streams are never decoded (counted at
the decoder) and its refusals are summarised per round. Wall time under load belongs to a
benchmark, not to a unit test on a shared 2-core machine.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import trio
from transport_harness import Group, libp2p_group, memory_group

from p2pfed.collectives import round as round_module
from p2pfed.collectives.agreement_state import AgreementTiming, Phase
from p2pfed.collectives.codec import Envelope, MessageStream, encode
from p2pfed.collectives.faults import Exclusion
from p2pfed.collectives.messages import Done, Ready
from p2pfed.collectives.ring_driver import RingConfig
from p2pfed.collectives.round import CONTROL_PROTOCOL, MAX_PER_ROUND, RingRound, RoundOutcome
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import BrokenError, ClosedError, ReasonCode
from p2pfed.governance.audit import AuditLog
from p2pfed.governance.metrics import NodeMetrics
from p2pfed.governance.models import ModelRegistry
from p2pfed.governance.recorder import GovernanceRecorder
from p2pfed.transport import MemoryNetwork
from p2pfed.transport.base import Transport
from tests.governance_helpers import SALT, FakeClock, make_signer

CONSORTIUM = "bounds-test"
MEMBERS = ["a", "b", "c"]
TIMING = AgreementTiming(collect_window=1.0, takeover_timeout=3.0, commit_timeout=6.0)
RING = RingConfig(timeout=2.0)
FLOOD = 20_000
PER_STREAM = 1_000
ROUNDS = 6


def signers(members: list[str] = MEMBERS) -> dict[str, Ed25519CohortSigner]:
    seeds = {p: bytes([i + 1]) * 32 for i, p in enumerate(members)}
    public = {p: Ed25519CohortSigner(seeds[p], {}).public_key for p in members}
    return {p: Ed25519CohortSigner(seeds[p], public) for p in members}


def batches(frames: list[bytes]) -> list[bytes]:
    """The frames joined PER_STREAM at a time (one stream's worth each)."""
    return [b"".join(frames[i : i + PER_STREAM]) for i in range(0, len(frames), PER_STREAM)]


async def flood(attacker: Transport, target: str, payloads: list[bytes]) -> int:
    """Send each payload on its own stream to ``target``'s control protocol; streams used."""
    streams = 0
    for payload in payloads:
        streams += 1
        try:
            stream = await attacker.open_stream(target, CONTROL_PROTOCOL)
            async with stream:
                await stream.send_all(payload)
                await stream.send_eof()
                while await stream.receive_some():
                    pass
        except (BrokenError, ClosedError):
            pass  # refused: the target closed the stream on us
    return streams


def ring_rounds(transports: list[Transport]) -> list[RingRound]:
    """One ``RingRound`` per member transport, all members of each other's rounds."""
    members = [t.local_peer for t in transports]
    keys = signers(members)
    return [
        RingRound(t, CONSORTIUM, 1, members, keys[t.local_peer], timing=TIMING, ring_config=RING)
        for t in transports
    ]


async def run_rounds(
    runners: list[RingRound], first: int, flood_with: Callable[[], Awaitable[None]] | None = None
) -> list[list[RoundOutcome]]:
    """ROUNDS rounds from round ``first`` at every runner, while ``flood_with`` runs; the
    outcomes per runner."""
    # Large enough that the rounds are still running while the flood arrives.
    vector = np.arange(1 << 20, dtype=np.uint32)
    outcomes: list[list[RoundOutcome]] = [[] for _ in runners]

    async def member(k: int) -> None:
        for r in range(first, first + ROUNDS):
            outcomes[k].append(await runners[k].all_reduce(vector, r))

    async with trio.open_nursery() as nursery:
        if flood_with is not None:
            nursery.start_soon(flood_with)
        for k in range(len(runners)):
            nursery.start_soon(member, k)
    return outcomes


def audit_lines(tmp_path: Path, name: str, outcomes: list[RoundOutcome]) -> int:
    """Record the outcomes' exclusions as the daemon does; the audit log's entries added."""
    audit = AuditLog(
        tmp_path / f"{name}.jsonl", make_signer(b"\x09" * 32), salt=SALT, clock=FakeClock()
    )
    recorder = GovernanceRecorder(
        audit, ModelRegistry(tmp_path / f"{name}-models"), metrics=NodeMetrics()
    )
    before = len((tmp_path / f"{name}.jsonl").read_text().splitlines())
    for outcome in outcomes:
        for e in outcome.exclusions:
            recorder.exclude(outcome.round, e.peer, e.reason, e.detail, e.count)
    audit.close()
    return len((tmp_path / f"{name}.jsonl").read_text().splitlines()) - before


def from_peer(outcomes: list[RoundOutcome], peer: str) -> list[Exclusion]:
    return [e for o in outcomes for e in o.exclusions if e.peer == peer]


class DecodeCounter:
    """Counts, per remote peer, the control messages the round-control decoder read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read: dict[str, int] = {}
        counter = self

        class Counting(MessageStream):
            async def receive(self, timeout: float = math.inf) -> Envelope | None:
                envelope = await super().receive(timeout)
                if envelope is not None:
                    peer = self.stream.remote_peer
                    counter.read[peer] = counter.read.get(peer, 0) + 1
                return envelope

        monkeypatch.setattr(round_module, "MessageStream", Counting)


async def observer_flood(group: Group, tmp_path: Path, decoded: DecodeCounter) -> None:
    """Issue 21 (c): 20,000 valid Ready messages from an admitted observer (the group's last
    transport) to the first member, while three members run rounds."""
    *members, observer = group.transports
    runners = ring_rounds(members)
    target = runners[0]
    me = observer.local_peer
    # Valid, correctly sequenced Ready frames for the first flooded round.
    payloads = batches(
        [encode(Ready(2 * ROUNDS, 0, 0, ()), CONSORTIUM, me, n)[0] for n in range(FLOOD)]
    )
    sent: list[int] = []

    async def attack() -> None:
        sent.append(await flood(observer, target.me, payloads))

    async def warm_up() -> None:  # every code path once (connections, first refusals)
        await flood(observer, target.me, payloads[:1])

    await run_rounds(runners, 0, warm_up)
    target.control.drain()
    normal = await run_rounds(runners, ROUNDS)
    assert all(o.committed for o in normal[0])
    flooded = await run_rounds(runners, 2 * ROUNDS, attack)
    assert sent == [FLOOD // PER_STREAM], "the observer's flood did not run"
    assert all(o.committed for outcomes in flooded for o in outcomes)
    after = await run_rounds(runners, 3 * ROUNDS)
    assert all(o.committed for o in after[0])
    # The members' own messages went through the counted decoder; not one of the observer's.
    assert decoded.read.get(members[1].local_peer, 0) > 0
    assert decoded.read.get(me, 0) == 0, f"{decoded.read[me]} flood messages were decoded"
    # Nothing of the observer's reached the agreement: every stream was refused unread, and
    # the refusals are summarised per round, not per message.
    refused = from_peer(flooded[0], me)
    assert {e.reason for e in refused} == {ReasonCode.NOT_MEMBER}
    late = from_peer(after[0], me) + [e for e in target.control.drain() if e.peer == me]
    assert sum(e.count for e in refused + late) == sent[0]
    assert len({(e.round, e.reason) for e in refused}) == len(refused) <= ROUNDS
    assert audit_lines(tmp_path, "flooded", flooded[0]) == len(refused)


async def test_observer_flood_of_valid_ready_messages_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with memory_group(4) as group:
        await observer_flood(group, tmp_path, DecodeCounter(monkeypatch))


@pytest.mark.network
@pytest.mark.slow
async def test_observer_flood_over_libp2p_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(120):
        async with libp2p_group(4, "flood") as group:
            await observer_flood(group, tmp_path, DecodeCounter(monkeypatch))


async def test_member_flood_is_capped_per_round_and_summarised(tmp_path: Path) -> None:
    """A member that floods a round puts at most MAX_PER_ROUND messages in the mailbox."""
    net = MemoryNetwork()
    keys = signers()
    async with net.open("a") as a, net.open("b") as b:
        ra = RingRound(a, CONSORTIUM, 1, MEMBERS, keys["a"], timing=TIMING, ring_config=RING)
        mailbox = ra.control.open_round(0)
        frames = [encode(Done(0, 0), CONSORTIUM, "b", seq)[0] for seq in range(FLOOD)]
        streams = await flood(b, "a", batches(frames))
        queued = 0
        while True:
            try:
                mailbox.receive_nowait()
            except trio.WouldBlock:
                break
            queued += 1
        assert queued == MAX_PER_ROUND
        refused = [e for e in ra.control.exclusions if e.peer == "b"]
        assert [(e.round, e.reason) for e in refused] == [(0, ReasonCode.RATE_LIMITED)]
        # The first over-budget message, then one unread stream per later attempt.
        assert refused[0].count == streams
        # The next round gives the member a fresh budget.
        ra.control.close_round(0)
        mailbox = ra.control.open_round(1)
        await flood(b, "a", [encode(Done(1, 0), CONSORTIUM, "b", 0)[0]])  # one stream
        assert mailbox.receive_nowait() == ("b", Done(1, 0))
        assert audit_lines(
            tmp_path,
            "member",
            [RoundOutcome(0, Phase.FAILED, None, None, 1, refused)],
        ) == len(refused)


async def test_gossip_takes_one_vector_per_node_and_round_and_none_from_outsiders() -> None:
    """Clear gossip: an outsider's vectors are refused unread; a node's repeats are refused."""
    import topologies
    from p2pfed.collectives.codec import MessageStream
    from p2pfed.collectives.gossip_driver import GOSSIP_SYNC_PROTOCOL, GossipService, send_vector

    async def send_once(sender: Transport) -> None:
        try:
            stream = await sender.open_stream("a", GOSSIP_SYNC_PROTOCOL)
            async with stream:
                out = MessageStream(stream, CONSORTIUM, sender.local_peer)
                await send_vector(out, 0, vector, 4096)
                await stream.send_eof()
                while await stream.receive_some():
                    pass
        except (BrokenError, ClosedError):
            pass  # refused unread

    net = MemoryNetwork()
    peers = ["a", "b", "c"]
    vector = np.ones(16, np.float32)
    async with net.open("a") as a, net.open("b") as b, net.open("o") as o:
        service = GossipService(a, CONSORTIUM, peers, topologies.build("complete", 3))
        for _ in range(50):
            await send_once(b)
            await send_once(o)
        _, mailbox = service._box(0)
        queued = []
        while True:
            try:
                queued.append(mailbox.receive_nowait().peer)
            except trio.WouldBlock:
                break
        assert queued == ["b"]
        summary = {(e.peer, e.reason): e.count for e in service.refusals.drain()}
        assert summary == {("b", ReasonCode.DUPLICATE): 49, ("o", ReasonCode.NOT_MEMBER): 50}


async def test_secure_gossip_never_reads_an_outsiders_masked_vector() -> None:
    import topologies
    from p2pfed.collectives.codec import MessageStream
    from p2pfed.collectives.gossip_driver import send_vector
    from p2pfed.collectives.secure_gossip import MASKED_SUM_PROTOCOL, SecureGossipService
    from p2pfed.identity import Identity

    ids = {i.peer_id: i for i in (Identity.from_seed(bytes([k + 1]) * 32) for k in range(3))}
    peers = sorted(ids)
    keys = {p: ids[p].public_key for p in peers}
    net = MemoryNetwork()
    async with net.open(peers[0]) as a, net.open("o") as o:
        service = SecureGossipService(
            a, CONSORTIUM, peers, topologies.build("complete", 3), keys, ids[peers[0]]
        )
        for _ in range(5):
            try:
                stream = await o.open_stream(peers[0], MASKED_SUM_PROTOCOL)
                async with stream:
                    out = MessageStream(stream, CONSORTIUM, "o")
                    await send_vector(out, 0, np.ones(1 << 16, np.uint32), 1 << 16)
                    await stream.send_eof()
                    while await stream.receive_some():
                        pass
            except (BrokenError, ClosedError):
                pass  # refused unread
        assert service._collections == {}
        summary = {(e.peer, e.reason): e.count for e in service.channel.drain()}
        assert summary == {("o", ReasonCode.NOT_MEMBER): 5}

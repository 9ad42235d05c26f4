"""Bounded, cheap refusal on the round-control protocol, shown by floods that fail.

Real clock on purpose: what a flood costs is CPU time, which a mock clock does not see. Each
test measures the normal round time in the same run and compares against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import trio

from p2pfed.collectives.agreement import AgreementTiming, Phase
from p2pfed.collectives.codec import encode
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


def signers() -> dict[str, Ed25519CohortSigner]:
    seeds = {p: bytes([i + 1]) * 32 for i, p in enumerate(MEMBERS)}
    public = {p: Ed25519CohortSigner(seeds[p], {}).public_key for p in MEMBERS}
    return {p: Ed25519CohortSigner(seeds[p], public) for p in MEMBERS}


async def flood(attacker: Transport, target: str, frames: list[bytes]) -> int:
    """Send ``frames`` to ``target``'s control protocol, PER_STREAM per stream; streams used."""
    streams = 0
    for start in range(0, len(frames), PER_STREAM):
        streams += 1
        try:
            stream = await attacker.open_stream(target, CONTROL_PROTOCOL)
            async with stream:
                await stream.send_all(b"".join(frames[start : start + PER_STREAM]))
                await stream.send_eof()
                while await stream.receive_some():
                    pass
        except (BrokenError, ClosedError):
            pass  # refused: the target closed the stream on us
    return streams


async def run_rounds(
    net: MemoryNetwork,
    first: int,
    attack: Callable[[RingRound, trio.Nursery], None] | None,
    runners: dict[str, RingRound],
) -> tuple[dict[str, list[RoundOutcome]], float]:
    """ROUNDS rounds of a, b, c from round ``first``; (outcomes per member, a's seconds).

    ``runners`` is filled with each member's ``RingRound``.
    """
    keys = signers()
    vector = np.arange(1 << 18, dtype=np.uint32)
    outcomes: dict[str, list[RoundOutcome]] = {m: [] for m in MEMBERS}
    ready = trio.Event()
    elapsed = 0.0

    async def member(me: str, nursery: trio.Nursery) -> None:
        nonlocal elapsed
        async with net.open(me) as transport:
            runners[me] = RingRound(
                transport, CONSORTIUM, 1, MEMBERS, keys[me], timing=TIMING, ring_config=RING
            )
            if len(runners) == len(MEMBERS):
                ready.set()
            await ready.wait()
            if me == "a" and attack is not None:
                attack(runners["a"], nursery)
            start = trio.current_time()
            for r in range(first, first + ROUNDS):
                outcomes[me].append(await runners[me].all_reduce(vector, r))
            if me == "a":
                elapsed = trio.current_time() - start
            await trio.sleep(0.2)  # let late messages land while the others finish

    async with trio.open_nursery() as nursery:
        for m in MEMBERS:
            nursery.start_soon(member, m, nursery)
    return outcomes, elapsed


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


async def test_observer_flood_of_valid_ready_messages_is_refused_unread(tmp_path: Path) -> None:
    """Issue 21 (c): 20,000 valid Ready messages from an admitted observer."""
    net = MemoryNetwork()
    normal, normal_s = await run_rounds(net, 0, None, {})
    assert all(o.committed for o in normal["a"])
    sent: list[int] = []

    # Valid, correctly sequenced Ready frames for the first flooded round, encoded before
    # the clock starts: the attacker's own CPU is not what is measured.
    frames = [encode(Ready(ROUNDS, 0, 0, ()), CONSORTIUM, "o", seq)[0] for seq in range(FLOOD)]

    def attack(target: RingRound, nursery: trio.Nursery) -> None:
        async def observer() -> None:
            async with net.open("o") as transport:
                sent.append(await flood(transport, target.me, frames))

        nursery.start_soon(observer)

    runners: dict[str, RingRound] = {}
    flooded, flooded_s = await run_rounds(net, ROUNDS, attack, runners)
    assert sent, "the observer's flood did not run"
    assert all(o.committed for m in MEMBERS for o in flooded[m])
    assert flooded_s <= 2 * normal_s, (flooded_s, normal_s)
    # Nothing of the observer's reached the agreement: every stream was refused unread, and
    # the refusals are summarised per round, not per message.
    refused = from_peer(flooded["a"], "o")
    assert {e.reason for e in refused} == {ReasonCode.NOT_MEMBER}
    undrained = [e for e in runners["a"].control.drain() if e.peer == "o"]
    assert sum(e.count for e in refused + undrained) == sent[0] == FLOOD // PER_STREAM
    assert len({(e.round, e.reason) for e in refused}) == len(refused) <= ROUNDS
    assert audit_lines(tmp_path, "flooded", flooded["a"]) == len(refused)


async def test_member_flood_is_capped_per_round_and_summarised(tmp_path: Path) -> None:
    """A member that floods a round puts at most MAX_PER_ROUND messages in the mailbox."""
    net = MemoryNetwork()
    keys = signers()
    async with net.open("a") as a, net.open("b") as b:
        ra = RingRound(a, CONSORTIUM, 1, MEMBERS, keys["a"], timing=TIMING, ring_config=RING)
        mailbox = ra.control.open_round(0)
        frames = [encode(Done(0, 0), CONSORTIUM, "b", seq)[0] for seq in range(FLOOD)]
        streams = await flood(b, "a", frames)
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
        await flood(b, "a", [encode(Done(1, 0), CONSORTIUM, "b", 0)[0]])
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
    from p2pfed.collectives.gossip_driver import SYNC_PROTOCOL, GossipService, send_vector

    async def send_once(sender: Transport) -> None:
        try:
            stream = await sender.open_stream("a", SYNC_PROTOCOL)
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
                queued.append(mailbox.receive_nowait()[0])
            except trio.WouldBlock:
                break
        assert queued == ["b"]
        summary = {(e.peer, e.reason): e.count for e in service.refusals.drain()}
        assert summary == {("b", ReasonCode.DUPLICATE): 49, ("o", ReasonCode.NOT_MEMBER): 50}

"""Members on different roster versions never commit a round together (issue 21 item 3).

The ring order and the membership depend on the roster, so a cohort mixing versions would
sum misaligned chunks. Every Ready and Cohort carries its sender's roster version and a
cohort forms only within one version.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing
from test_collectives_round import RING, TIMING, signers

from p2pfed.collectives.codec import Decoder, encode
from p2pfed.collectives.messages import Cohort, Ready
from p2pfed.collectives.round import RingRound, RoundOutcome
from p2pfed.errors import ReasonCode
from p2pfed.transport import MemoryNetwork

PEERS = ["a", "b", "c", "d"]


async def run(versions: dict[str, int]) -> dict[str, RoundOutcome]:
    net = MemoryNetwork()
    keys = signers(PEERS)
    outcomes: dict[str, RoundOutcome] = {}
    ready = trio.Event()
    opened: set[str] = set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            runner = RingRound(
                transport,
                "v",
                versions[me],
                PEERS,
                keys[me],
                timing=TIMING,
                ring_config=RING,
            )
            opened.add(me)
            if len(opened) == len(PEERS):
                ready.set()
            await ready.wait()
            vector = np.full(16, float(PEERS.index(me) + 1), np.float32)
            outcomes[me] = await runner.all_reduce(vector, 0)
            await trio.sleep(TIMING.takeover_timeout)

    async with trio.open_nursery() as nursery:
        for p in PEERS:
            nursery.start_soon(peer, p)
    return outcomes


@pytest.mark.parametrize(
    "versions",
    [
        {"a": 7, "b": 6, "c": 6, "d": 6},  # one member restarted on the new roster
        {"a": 7, "b": 7, "c": 6, "d": 6},  # half and half
        {"a": 5, "b": 6, "c": 7, "d": 8},  # everyone on its own
    ],
)
async def test_no_cohort_mixes_roster_versions(
    versions: dict[str, int], autojump_clock: trio.testing.MockClock
) -> None:
    outcomes = await run(versions)
    for me, outcome in outcomes.items():
        if not outcome.committed:
            continue
        assert outcome.cohort is not None
        assert {versions[p] for p in outcome.cohort} == {versions[me]}
        assert outcome.result is not None
        expected = sum(PEERS.index(p) + 1 for p in outcome.cohort)
        assert np.all(outcome.result.vector == expected)  # a sum that is not corrupted
    mixed = [o for o in outcomes.values() if o.cohort and len(o.cohort) > 1]
    for o in mixed:
        assert o.cohort is not None
        assert len({versions[p] for p in o.cohort}) == 1


async def test_a_member_on_another_version_is_named_and_left_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    versions = {"a": 7, "b": 6, "c": 6, "d": 6}
    outcomes = await run(versions)
    assert not outcomes["a"].committed or outcomes["a"].cohort == ("a",)
    for p in "bcd":
        assert outcomes[p].committed and outcomes[p].cohort == ("b", "c", "d")
    # Whoever hears the other version names the sender (here "a" coordinates first and
    # hears the others' Ready messages).
    named = [
        (me, e.peer)
        for me, outcome in outcomes.items()
        for e in outcome.exclusions
        if e.reason is ReasonCode.PROTOCOL_VIOLATION and "roster version" in e.detail
    ]
    assert named and all(versions[me] != versions[peer] for me, peer in named)
    assert {peer for _, peer in named} >= {"b", "c", "d"}


def test_the_roster_version_is_signed_and_carried() -> None:
    cohort = Cohort(0, 0, 0, "a", ("a", "b"), b"", 6)
    other = Cohort(0, 0, 0, "a", ("a", "b"), b"", 7)
    assert cohort.signed_bytes("v") != other.signed_bytes("v")
    for message in (Ready(3, 1, 0, (("b", "timeout"),), 6), Cohort(3, 1, 0, "a", ("a",), b"s", 6)):
        data, _ = encode(message, "v", "a", 0)
        decoder = Decoder("a")
        decoder.feed(data)
        envelope = decoder.next()
        assert envelope is not None and envelope.message == message

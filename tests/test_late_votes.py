"""Commit votes that come late still certify the model, and only with a quorum.

Under load (CI, 2 cores, load 10-16) a member's wait for the other contributors' votes ended
before they arrived, and it ended the run with its last model uncertified. Performed here
deterministically on trio's virtual clock: the votes arrive after the wait, after the next
round started, one of them for another model and one short of the quorum.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from test_certificates import HONEST_W, NAMES, SIGNERS, SIZE, Server, certify, policy
from test_node import Consortium
from transport_harness import SlowOpens

from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.node.certificates import CommitCertificate, CommitStatement
from p2pfed.node.certify import CertificateService
from p2pfed.node.sync import ModelSync, weights_digest
from p2pfed.transport import MemoryNetwork

COHORT = tuple(sorted(NAMES[:4]))  # quorum 3
MINE = CommitStatement("c", 7, 0, b"\1" * 32, COHORT)
OTHER = CommitStatement("c", 7, 0, b"\2" * 32, COHORT)


async def test_a_vote_after_the_wait_certifies_the_held_model_once_a_quorum_is_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    late: list[CommitCertificate] = []
    with trio.fail_after(60):
        async with (
            net.open(NAMES[0]) as a,
            net.open(NAMES[1]) as b,
            net.open(NAMES[2]) as c,
            net.open(NAMES[3]) as d,
        ):
            services = {
                t.local_peer: CertificateService(t, policy(), SIGNERS[t.local_peer], timeout=1.0)
                for t in (a, b, c, d)
            }
            mine = services[NAMES[0]]
            mine.on_certified = late.append
            # Nobody else has committed yet: the wait ends with our vote alone.
            assert await mine.certify_round(0, MINE.digest, frozenset(COHORT)) is None
            mine.low = 1  # the next round has started here
            await services[NAMES[2]].certify(OTHER)  # a vote for another model: not counted
            await services[NAMES[3]].certify(MINE)  # two of the three needed
            assert late == []
            await services[NAMES[1]].certify(MINE)  # the third
            assert len(late) == 1
            policy().check(late[0], "x")
            assert late[0].statement == MINE
            assert [p for p, _ in late[0].signatures] == sorted([NAMES[0], NAMES[1], NAMES[3]])
            # Certified once: a further vote changes nothing.
            await services[NAMES[2]].certify(MINE)
            assert len(late) == 1


async def test_a_member_takes_a_certificate_for_its_model_only_if_it_holds() -> None:
    """The cohort's certificate for exactly our model is taken; a stolen key's own is not."""
    net = MemoryNetwork()
    digest = weights_digest(HONEST_W)
    self_signed = certify(3, HONEST_W, [NAMES[4]])  # the thief alone, for our very model
    with trio.fail_after(10):
        async with (
            net.open(NAMES[0]) as me,
            net.open(NAMES[1]) as honest,
            net.open(NAMES[2]) as other_model,
            net.open(NAMES[4]) as thief,
        ):
            Server(thief, 3, HONEST_W, self_signed)
            Server(other_model, 3, HONEST_W * 2, certify(3, HONEST_W * 2, NAMES[:3]))
            sync = ModelSync(
                me,
                "c",
                lambda: (3, HONEST_W, None),
                SIZE,
                policy=policy(),
                clock=itertools.count(0, 1000).__next__,
            )
            answers = await sync.probe([NAMES[2], NAMES[4]], 5.0)
            assert sync.certificate_of(answers, 3, digest) is None
            assert [r.peer for r in sync.refusals] == [NAMES[4]]  # named
            Server(honest, 3, HONEST_W, certify(3, HONEST_W, NAMES[:2]))
            answers = await sync.probe([NAMES[1], NAMES[2], NAMES[4]], 5.0)
            found = sync.certificate_of(answers, 3, digest)
            assert found is not None and found.digest == digest
            assert [p for p, _ in found.signatures] == sorted(NAMES[:2])


def cohort_certificate(c: Consortium, round_: int, w: np.ndarray) -> CommitCertificate:
    """Two of the three members' signatures over (round_, w): the quorum."""
    ids = sorted(i.peer_id for i in c.ids)
    s = CommitStatement("test", 1, round_, weights_digest(w), tuple(ids))
    by_id = {i.peer_id: i for i in c.ids}
    data = s.signed_bytes()
    sigs = [(p, Ed25519CohortSigner(by_id[p].seed, c.keys).sign(data)) for p in ids[:2]]
    return CommitCertificate(s, tuple(sorted(sigs)))


@pytest.mark.slow  # about 15 s on a loaded machine: Peers with their trainers
async def test_a_peer_keeps_a_late_certificate_only_for_the_model_it_holds(
    tmp_path: Path,
) -> None:
    """Kept, checkpointed and reported; one for another model or round is ignored. A member
    without one takes the cohort's from a member holding the same model when it reconciles."""
    c = Consortium(tmp_path, 3)
    heard: list[CommitCertificate] = []
    weights = np.full(30 * 2 + 2, 0.25, np.float32)  # the logistic model's shared weights
    good = cohort_certificate(c, 0, weights)
    with trio.fail_after(60):
        async with c.peer(0) as peer, c.peer(1) as other:
            peer.on_certified = heard.append
            peer._adopt(0, weights)
            peer.certified_late(cohort_certificate(c, 0, weights + 1))  # another model
            peer.certified_late(cohort_certificate(c, 1, weights))  # another round
            assert peer.certificate is None and heard == []
            peer.certified_late(good)
            assert peer.certificate == good and heard == [good]
            # The other member's wait ended below the quorum: it takes ours.
            other._adopt(0, weights)
            assert other.certificate is None
            assert not await other.reconcile()  # same model: nothing to adopt
            assert other.certificate == good
    async with c.peer(0) as restarted:  # checkpointed with the model
        assert restarted.certificate == good


async def test_a_vote_slower_than_the_wait_is_still_delivered_within_its_send_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The wait for the others' votes is 1 s; ours takes 3 s to reach them and still counts:
    a vote cut off at the wait would be lost, as nothing resends it."""
    net = MemoryNetwork()
    with trio.fail_after(60):
        async with net.open(NAMES[0]) as a, net.open(NAMES[1]) as b:
            slow = CertificateService(
                SlowOpens(a, 3.0), policy(), SIGNERS[NAMES[0]], timeout=1.0, send_timeout=5.0
            )
            other = CertificateService(b, policy(), SIGNERS[NAMES[1]], timeout=1.0)
            started = trio.current_time()
            await slow.certify(MINE)
            assert trio.current_time() - started >= 3.0  # it waited for its sends
            certificate = await other.certify(MINE)
            assert NAMES[0] in [p for p, _ in certificate.signatures]


@pytest.mark.slow  # a few seconds: Peers with their trainers
async def test_the_final_linger_lasts_until_the_reachable_members_hold_the_certificate(
    tmp_path: Path,
) -> None:
    """Every member at the final round must hold its certificate before we stop serving:
    b's wait ended below the quorum, so a lingers until b has one."""
    c = Consortium(tmp_path, 2)
    weights = np.full(30 * 2 + 2, 0.25, np.float32)
    good = cohort_certificate(c, 0, weights)
    probes = 0
    with trio.fail_after(60):
        async with c.peer(0) as a, c.peer(1) as b:
            a._adopt(0, weights, good)
            b._adopt(0, weights)
            probe = a.sync.probe

            async def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal probes
                probes += 1
                if probes == 3:  # b's late votes arrive only now
                    b.certified_late(good)
                return await probe(*args, **kwargs)

            a.sync.probe = counted  # type: ignore[method-assign]
            await a.linger(0, 30.0)
            assert b.certificate == good
            assert probes >= 3  # not done while b held no certificate

"""A member on a new roster version accepts the old version's certificates for the old rounds.

Seen in CI (tests/test_daemon_roster.py): a member took roster version 2 first and refused
the others' round 1, which they committed and certified under version 1 just before they
switched. Its catch-up refused their version-1 certificate, so it stayed on its round-0
model. Now the version before ours is trusted for the rounds before the first round
certified under ours, judged by its own members and keys; never for a later round, never a
version further back. Attacks run through real ``ModelSync`` objects.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
from test_certificates import IDS, NAMES, SIZE, Server

from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import ReasonCode, RemoteProtocolError
from p2pfed.node.certificates import (
    CertificatePolicy,
    CommitCertificate,
    CommitStatement,
    assemble,
)
from p2pfed.node.sync import ModelSync, weights_digest
from p2pfed.transport import MemoryNetwork

V1_KEYS = {i.peer_id: i.public_key for i in IDS}  # version 1: all five
REMOVED = NAMES[4]
V2_KEYS = {p: k for p, k in V1_KEYS.items() if p != REMOVED}  # version 2 removes one
V1 = {i.peer_id: Ed25519CohortSigner(i.seed, V1_KEYS) for i in IDS}
V2 = {i.peer_id: Ed25519CohortSigner(i.seed, V2_KEYS) for i in IDS}
ME = NAMES[0]


def v2_policy(follow: bool = True) -> CertificatePolicy:
    policy = CertificatePolicy("c", 2, frozenset(V2_KEYS), V2[ME])
    if follow:
        policy.handover.follow(1, frozenset(V1_KEYS), V1[ME])
    return policy


def certificate(
    version: int, round_: int, weights: np.ndarray, signers: list[str]
) -> CommitCertificate:
    keys = V1 if version == 1 else V2
    statement = CommitStatement(
        "c", version, round_, weights_digest(weights), tuple(sorted(signers))
    )
    data = statement.signed_bytes()
    return assemble(statement, [(p, keys[p].sign(data)) for p in signers])


W1 = np.full(SIZE, 0.25, np.float32)
W2 = np.full(SIZE, 0.75, np.float32)


def test_the_version_before_ours_certifies_rounds_before_ours_took_over() -> None:
    policy = v2_policy()
    old = certificate(1, 1, W1, [NAMES[1], REMOVED])  # a quorum only with the removed one
    policy.check(old, NAMES[1])  # valid under version 1: its members, its keys
    policy.check(certificate(2, 2, W2, NAMES[1:4]), NAMES[1])  # our version certified round 2
    assert policy.handover.current_from == 2
    policy.check(old, NAMES[1])  # round 1 ran before: still trusted
    with pytest.raises(RemoteProtocolError, match="nor the version before") as info:
        policy.check(certificate(1, 2, W1, NAMES[1:4]), NAMES[1])  # after ours took over
    assert info.value.reason is ReasonCode.PROTOCOL_VIOLATION


@pytest.mark.parametrize(
    "case", ["not followed", "two versions back", "followed without the removed member"]
)
def test_no_other_old_certificate_is_trusted(case: str) -> None:
    policy = v2_policy(follow=case != "not followed")
    if case == "two versions back":
        policy = CertificatePolicy("c", 3, frozenset(V2_KEYS), V2[ME])
        policy.handover.follow(2, frozenset(V2_KEYS), V2[ME])
    cert = certificate(1, 1, W1, [NAMES[1], REMOVED])
    if case == "two versions back":  # signers who are members of every version
        cert = certificate(1, 1, W1, [NAMES[1], NAMES[2]])
    if case == "followed without the removed member":  # judged by the members it was followed with
        policy = CertificatePolicy("c", 2, frozenset(V2_KEYS), V2[ME])
        policy.handover.follow(1, frozenset(V2_KEYS), V2[ME])
    with pytest.raises(RemoteProtocolError):
        policy.check(cert, NAMES[1])


async def test_a_member_on_the_new_version_catches_up_to_the_old_versions_last_round() -> None:
    """The CI case: on version 2 at round 0, the others certified round 1 under version 1."""
    net = MemoryNetwork()
    with trio.fail_after(10):
        async with net.open(ME) as me, net.open(NAMES[1]) as other, net.open(NAMES[2]) as newer:
            served = Server(other, 1, W1, certificate(1, 1, W1, sorted(NAMES[1:4])))
            sync = ModelSync(
                me, "c", lambda: (0, np.zeros(SIZE, np.float32), None), SIZE, policy=v2_policy()
            )
            fetched = await sync.best_model([NAMES[1]], newer_than=0)
            assert fetched is not None and fetched.round == 1
            assert fetched.weights.tobytes() == W1.tobytes()
            # Once a round is certified under version 2, version 1 certifies nothing after it.
            Server(newer, 2, W2, certificate(2, 2, W2, sorted(NAMES[1:4])))
            fetched = await sync.best_model([NAMES[2]], newer_than=1)
            assert fetched is not None and fetched.round == 2
            served.round, served.weights = 3, W2
            served.cert = certificate(1, 3, W2, sorted(NAMES[1:4]))
            assert await sync.best_model([NAMES[1]], newer_than=2) is None
    assert [(r.peer, r.round, r.reason) for r in sync.refusals] == [
        (NAMES[1], 3, ReasonCode.PROTOCOL_VIOLATION)
    ]

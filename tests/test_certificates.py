"""Commit certificates: they verify, tampering with any field is refused, and model sync
adopts only a certified model (attacks performed through real ``ModelSync`` objects)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import IntegrityError, ReasonCode, RemoteProtocolError
from p2pfed.identity import Identity
from p2pfed.node.certificates import (
    CertificatePolicy,
    CommitCertificate,
    CommitStatement,
    assemble,
    commit_quorum,
)
from p2pfed.node.certify import CertificateService
from p2pfed.node.sync import ModelSync, weights_digest
from p2pfed.transport import MemoryNetwork

IDS = [Identity.from_seed(bytes([k + 1]) * 32) for k in range(5)]
KEYS = {i.peer_id: i.public_key for i in IDS}
NAMES = [i.peer_id for i in IDS]
SIGNERS = {i.peer_id: Ed25519CohortSigner(i.seed, KEYS) for i in IDS}
SIZE = 8


def policy(version: int = 7, floor: int = 2) -> CertificatePolicy:
    return CertificatePolicy("c", version, frozenset(NAMES), SIGNERS[NAMES[0]], floor)


def certify(
    round_: int, weights: np.ndarray, signers: list[str], contributors: list[str] | None = None
) -> CommitCertificate:
    statement = CommitStatement(
        "c", 7, round_, weights_digest(weights), tuple(sorted(contributors or signers))
    )
    data = statement.signed_bytes()
    return assemble(statement, [(p, SIGNERS[p].sign(data)) for p in signers])


def test_quorum_is_the_cohort_majority_and_never_below_the_floor() -> None:
    assert [commit_quorum(n) for n in (1, 2, 3, 4, 5, 6)] == [2, 2, 2, 3, 3, 4]
    assert commit_quorum(3, floor=3) == 3


def test_a_quorum_certificate_verifies_and_round_trips() -> None:
    w = np.arange(SIZE, dtype=np.float32)
    cert = certify(4, w, NAMES[:2], NAMES[:3])  # 2 of 3: the majority
    policy().check(cert, "x")
    assert CommitCertificate.decode(cert.encode(), "x") == cert
    assert CommitCertificate.from_dict(cert.to_dict()) == cert


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("consortium", ReasonCode.WRONG_CONSORTIUM),
        ("roster_version", ReasonCode.PROTOCOL_VIOLATION),
        ("round", ReasonCode.BAD_SIGNATURE),
        ("digest", ReasonCode.BAD_SIGNATURE),
        ("contributors", ReasonCode.BAD_SIGNATURE),
        ("signature", ReasonCode.BAD_SIGNATURE),
    ],
)
def test_tampering_with_any_field_is_refused(what: str, reason: ReasonCode) -> None:
    cert = certify(4, np.zeros(SIZE, np.float32), NAMES[:2])
    s = cert.statement
    changed = {
        "consortium": dataclasses.replace(s, consortium="other"),
        "roster_version": dataclasses.replace(s, roster_version=8),
        "round": dataclasses.replace(s, round=1_000_000),
        "digest": dataclasses.replace(s, digest=b"\1" * 32),
        "contributors": dataclasses.replace(s, contributors=tuple(sorted(NAMES[:3]))),
    }
    if what == "signature":
        peer, sig = cert.signatures[0]
        forged = CommitCertificate(s, ((peer, bytes([sig[0] ^ 1]) + sig[1:]), *cert.signatures[1:]))
    else:
        forged = CommitCertificate(changed[what], cert.signatures)
    with pytest.raises(RemoteProtocolError) as info:
        policy().check(forged, "mallory")
    assert info.value.reason is reason and info.value.peer == "mallory"


@pytest.mark.parametrize(
    ("signers", "contributors"),
    [
        ([NAMES[4]], [NAMES[4]]),  # one stolen key, a "cohort" of itself
        ([NAMES[4]], NAMES[3:5]),  # one of two: no majority
        (NAMES[2:4], NAMES[:5]),  # two of five: no majority
    ],
)
def test_too_few_signatures_are_refused(signers: list[str], contributors: list[str]) -> None:
    cert = certify(3, np.zeros(SIZE, np.float32), signers, contributors)
    with pytest.raises(RemoteProtocolError, match="valid signatures"):
        policy().check(cert, "x")


def test_a_certificate_naming_non_members_is_refused() -> None:
    stranger = Identity.from_seed(b"\x77" * 32)
    keys = KEYS | {stranger.peer_id: stranger.public_key}
    statement = CommitStatement("c", 7, 1, b"\0" * 32, tuple(sorted([NAMES[0], stranger.peer_id])))
    data = statement.signed_bytes()
    cert = assemble(
        statement,
        [
            (NAMES[0], SIGNERS[NAMES[0]].sign(data)),
            (stranger.peer_id, Ed25519CohortSigner(stranger.seed, keys).sign(data)),
        ],
    )
    with pytest.raises(RemoteProtocolError) as info:
        policy().check(cert, "x")
    assert info.value.reason is ReasonCode.UNKNOWN_PEER


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_garbage_only_ever_raises_malformed(data: bytes) -> None:
    try:
        CommitCertificate.decode(data, "x")
    except RemoteProtocolError as exc:
        assert exc.reason is ReasonCode.MALFORMED
        assert "from x" in str(exc)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, (1 << 62) - 1),
    st.integers(0, (1 << 63) - 1),
    st.binary(min_size=32, max_size=32),
    st.sets(st.sampled_from(NAMES), min_size=1),
)
def test_certificates_round_trip(round_: int, version: int, digest: bytes, who: set[str]) -> None:
    statement = CommitStatement("c", version, round_, digest, tuple(sorted(who)))
    cert = assemble(statement, [(p, b"\5" * 64) for p in who])
    assert CommitCertificate.decode(cert.encode(), "x") == cert


# -- the exchange and model sync over the in-memory network ------------------------------


async def test_cohort_members_exchange_votes_into_a_full_certificate() -> None:
    net = MemoryNetwork()
    w = np.ones(SIZE, np.float32)
    statement = CommitStatement("c", 7, 0, weights_digest(w), tuple(sorted(NAMES[:3])))
    got: dict[str, CommitCertificate] = {}
    with trio.fail_after(10):
        async with net.open(NAMES[0]) as a, net.open(NAMES[1]) as b, net.open(NAMES[2]) as c:
            services = {
                t.local_peer: CertificateService(t, policy(), SIGNERS[t.local_peer])
                for t in (a, b, c)
            }

            async def one(peer: str) -> None:
                got[peer] = await services[peer].certify(statement)

            async with trio.open_nursery() as nursery:
                for peer in services:
                    nursery.start_soon(one, peer)
    for cert in got.values():
        assert [p for p, _ in cert.signatures] == sorted(NAMES[:3])
        policy().check(cert, "x")


async def test_a_vote_for_another_statement_does_not_count() -> None:
    net = MemoryNetwork()
    w = np.ones(SIZE, np.float32)
    honest = CommitStatement("c", 7, 0, weights_digest(w), tuple(sorted(NAMES[:2])))
    liar = dataclasses.replace(honest, digest=b"\3" * 32)
    with trio.fail_after(10):
        async with net.open(NAMES[0]) as a, net.open(NAMES[1]) as b:
            mine = CertificateService(a, policy(), SIGNERS[NAMES[0]], timeout=0.5)
            theirs = CertificateService(b, policy(), SIGNERS[NAMES[1]], timeout=0.5)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(theirs.certify, liar)
                cert = await mine.certify(honest)
    assert [p for p, _ in cert.signatures] == [NAMES[0]]  # only our own vote
    with pytest.raises(RemoteProtocolError):
        policy().check(cert, "x")


class Server:
    """A member's model-sync endpoint serving whatever the test puts in it."""

    def __init__(self, transport: object, round_: int, weights: np.ndarray, cert: object) -> None:
        self.round, self.weights, self.cert = round_, weights, cert
        self.served = 0
        self.sync = ModelSync(transport, "c", self.current, SIZE)  # type: ignore[arg-type]

    def current(self) -> tuple[int, np.ndarray, object]:
        self.served += 1
        return self.round, self.weights, self.cert


HONEST_W = np.full(SIZE, 0.5, np.float32)
EVIL_W = np.full(SIZE, 1e30, np.float32)


def forged(kind: str) -> tuple[int, np.ndarray, CommitCertificate | None]:
    """What the member with a stolen key (NAMES[4]) serves."""
    me = NAMES[4]
    if kind == "none":
        return 1_000_000, EVIL_W, None
    if kind == "self-signed":
        return 1_000_000, EVIL_W, certify(1_000_000, EVIL_W, [me])
    if kind == "half-signed":
        return 1_000_000, EVIL_W, certify(1_000_000, EVIL_W, [me], [NAMES[0], me])
    if kind == "replayed-higher":  # an honest certificate, a higher claimed round
        return 1_000_000, HONEST_W, certify(3, HONEST_W, NAMES[:2])
    if kind == "replayed-other-weights":
        return 3, EVIL_W, certify(3, HONEST_W, NAMES[:2])
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["none", "self-signed", "half-signed", "replayed-higher", "replayed-other-weights"]
)
async def test_sync_adopts_only_a_certified_model_and_names_the_forger(kind: str) -> None:
    net = MemoryNetwork()
    refused: list[object] = []
    with trio.fail_after(10):
        async with (
            net.open(NAMES[0]) as me,
            net.open(NAMES[1]) as honest,
            net.open(NAMES[4]) as evil,
        ):
            Server(honest, 3, HONEST_W, certify(3, HONEST_W, NAMES[:2]))
            Server(evil, *forged(kind))
            sync = ModelSync(
                me,
                "c",
                lambda: (0, np.zeros(SIZE, np.float32), None),
                SIZE,
                policy=policy(),
                on_refusal=refused.append,
                clock=itertools.count(0, 1000).__next__,  # every back-off over between asks
            )
            for _ in range(3):  # asked again and again, named once
                fetched = await sync.best_model([NAMES[1], NAMES[4]], newer_than=0)
                assert fetched is not None
                assert (fetched.peer, fetched.round) == (NAMES[1], 3)
                assert fetched.weights.tobytes() == HONEST_W.tobytes()
    assert [(r.peer, r.round) for r in sync.refusals] == [(NAMES[4], forged(kind)[0])]
    assert refused == sync.refusals


async def test_without_an_honest_certificate_nothing_is_adopted() -> None:
    net = MemoryNetwork()
    with trio.fail_after(10):
        async with net.open(NAMES[0]) as me, net.open(NAMES[4]) as evil:
            Server(evil, *forged("self-signed"))
            sync = ModelSync(
                me, "c", lambda: (0, np.zeros(SIZE, np.float32), None), SIZE, policy=policy()
            )
            assert await sync.best_model([NAMES[4]], newer_than=0) is None


async def test_non_finite_weights_are_refused_once_and_not_fetched_again(
    tmp_path: Path,
) -> None:
    net = MemoryNetwork()
    clock = trio.current_time
    with trio.fail_after(10):
        async with net.open(NAMES[0]) as me, net.open(NAMES[4]) as evil:
            # A valid certificate replayed in the status, NaN weights on the wire.
            evil_server = Server(evil, 3, HONEST_W, certify(3, HONEST_W, NAMES[:2]))
            real = evil_server.sync.current

            nan = np.full(SIZE, np.nan, np.float32)
            calls: list[int] = []

            def current() -> tuple[int, np.ndarray, object]:
                calls.append(1)
                r, w, c = real()
                return (r, nan if len(calls) % 2 == 0 else w, c)  # status fine, model NaN

            evil_server.sync.current = current  # type: ignore[assignment]
            sync = ModelSync(
                me,
                "c",
                lambda: (0, np.zeros(SIZE, np.float32), None),
                SIZE,
                policy=policy(),
                clock=clock,
            )
            for _ in range(20):
                assert await sync.best_model([NAMES[4]], newer_than=0) is None
    assert len(calls) == 2  # one status and one model, then the back-off holds
    assert [(r.peer, r.reason) for r in sync.refusals] == [(NAMES[4], ReasonCode.NON_FINITE)]
    assert sync.backing_off(NAMES[4])


@settings(max_examples=150, deadline=None)
@given(
    st.sets(st.sampled_from(NAMES), min_size=1),
    st.data(),
)
def test_a_certificate_holds_exactly_when_a_quorum_of_contributors_signed(
    cohort: set[str], data: st.DataObject
) -> None:
    signers = data.draw(st.sets(st.sampled_from(sorted(cohort))))
    cert = certify(2, HONEST_W, sorted(signers), sorted(cohort))
    holds = len(signers) >= commit_quorum(len(cohort))
    try:
        policy().check(cert, "x")
    except RemoteProtocolError:
        assert not holds
    else:
        assert holds


async def test_a_member_on_another_study_protocol_neither_serves_nor_is_served() -> None:
    """Its own cohort's certificate is valid, but its session (protocol hash) is not ours."""
    net = MemoryNetwork()
    with trio.fail_after(10):
        async with net.open(NAMES[0]) as me, net.open(NAMES[1]) as other:
            theirs = ModelSync(
                other,
                "c~bbbbbbbbbbbbbbbb",
                lambda: (3, HONEST_W, certify(3, HONEST_W, NAMES[:2])),
                SIZE,
                policy=policy(),
            )
            ours = ModelSync(
                me,
                "c~aaaaaaaaaaaaaaaa",
                lambda: (0, np.zeros(SIZE, np.float32), None),
                SIZE,
                policy=policy(),
                clock=itertools.count(0, 1000).__next__,
            )
            served = theirs.current
            theirs.current = lambda: pytest.fail("served a member of another protocol")
            assert await ours.best_model([NAMES[1]], newer_than=0) is None
            assert await theirs.best_model([NAMES[0]], newer_than=0) is None
            # A server that skips its own check still cannot hand us its model: we name it.
            theirs.current = served
            theirs._check_session = lambda session, peer: None  # type: ignore[method-assign]
            assert await ours.best_model([NAMES[1]], newer_than=0) is None
            assert await ours.fetch(NAMES[1], 3) is None
    assert [r.peer for r in ours.refusals] == [NAMES[1]]
    assert "session" in ours.refusals[0].detail


async def certify_rounds(
    digests: dict[str, bytes], timeout: float = 2.0
) -> dict[str, CommitCertificate | IntegrityError | None]:
    """Each named member certifies round 0 over the same cohort, for its own model digest."""
    net = MemoryNetwork()
    cohort = frozenset(digests)
    got: dict[str, CommitCertificate | IntegrityError | None] = {}
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            services = {}
            for name in digests:
                t = await stack.enter_async_context(net.open(name))
                services[name] = CertificateService(t, policy(), SIGNERS[name], timeout=timeout)

            async def one(name: str) -> None:
                try:
                    got[name] = await services[name].certify_round(0, digests[name], cohort)
                except IntegrityError as exc:
                    got[name] = exc

            async with trio.open_nursery() as nursery:
                for name in services:
                    nursery.start_soon(one, name)
    return got


async def test_a_member_outvoted_by_a_quorum_does_not_keep_its_divergent_model() -> None:
    """Summed onto a stale base, a member's model differs from the cohort's: not adopted."""
    good, stale = b"\1" * 32, b"\2" * 32
    got = await certify_rounds({NAMES[0]: good, NAMES[1]: good, NAMES[2]: stale})
    for name in NAMES[:2]:
        cert = got[name]
        assert isinstance(cert, CommitCertificate) and cert.digest == good
    refused = got[NAMES[2]]
    assert isinstance(refused, IntegrityError)
    assert good.hex()[:16] in str(refused) and "not adopted, catching up" in str(refused)


async def test_one_member_voting_for_another_model_cannot_make_the_others_drop_theirs() -> None:
    """A lone vote (a stolen key) is below the quorum: the round stays uncertified, not dropped."""
    mine, forged = b"\1" * 32, b"\3" * 32
    got = await certify_rounds({NAMES[0]: mine, NAMES[1]: forged}, timeout=0.5)
    assert got[NAMES[0]] is None and got[NAMES[1]] is None

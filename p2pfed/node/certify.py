"""The trio driver that gathers a commit certificate: each contributor's vote, sent to all.

Theory of operation: after a committed round a member calls ``certify`` with its
``CommitStatement``; it signs it, sends the vote (statement + signature, one CONTROL frame on
``CERT_PROTOCOL``) to every other contributor, and waits until every contributor's vote on
the same statement is in or ``timeout`` passes. Votes that arrive before this member
committed wait in a bounded store: only from roster members named as contributors, with a
signature that verifies, for rounds from ``low`` to ``low + max_ahead``, one per peer and
round (a second, different vote is equivocation and is recorded). The certificate holds the
votes gathered; ``CertificatePolicy.check`` decides whether it reaches the quorum.

Late votes: a member whose wait ended below the quorum (a loaded machine delivers votes late)
holds its statement until it certifies its next round; a vote for it that arrives meanwhile
still counts, and once the quorum is in, ``on_certified`` gets the certificate.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import trio

from p2pfed.collectives.faults import Exclusion
from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import IntegrityError, P2PFedError, ReasonCode, RemoteProtocolError
from p2pfed.node.certificates import (
    CertificatePolicy,
    CommitCertificate,
    CommitStatement,
    assemble,
    commit_quorum,
    decode_statement,
)
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire import Frame, FrameType, write_frame
from p2pfed.wire.exchange import read_one_frame

log = logging.getLogger(__name__)

CERT_PROTOCOL = "/p2pfed/commit-vote/1.0.0"
_SIG = 64
_MAX_AHEAD = 4


class CertificateService:
    """Signs this member's votes, receives the others', and assembles certificates."""

    def __init__(
        self,
        transport: Transport,
        policy: CertificatePolicy,
        signer: CohortSigner,
        *,
        timeout: float = 2.0,
        max_ahead: int = _MAX_AHEAD,
        on_certified: Callable[[CommitCertificate], None] | None = None,
        send_timeout: float | None = None,
    ) -> None:
        """``timeout``: the wait for the votes; ``on_certified``: see the module.

        ``send_timeout`` (default ``timeout``): for delivering each of ours, which, unlike
        the wait, nothing makes up for if cut short.
        """
        self.transport = transport
        self.policy = policy
        self.signer = signer
        self.timeout = timeout
        self.send_timeout = timeout if send_timeout is None else send_timeout
        self.max_ahead = max_ahead
        self.low = 0
        # Bounded: a member sending bad votes in a loop must not grow our memory.
        self.exclusions: deque[Exclusion] = deque(maxlen=256)
        # round → peer → (signed statement, signature, digest voted for)
        self._votes: dict[int, dict[str, tuple[bytes, bytes, bytes]]] = {}
        self._arrived = trio.Event()
        self.on_certified = on_certified
        # This member's last statement, while below the quorum: a late vote may certify it.
        self._held: CommitStatement | None = None
        transport.serve(CERT_PROTOCOL, self._handle)

    @property
    def me(self) -> str:
        """This peer's ID."""
        return self.transport.local_peer

    def _record(self, peer: str, statement: CommitStatement, signature: bytes) -> None:
        """Keep a verified vote; refusals are recorded, never raised to the sender's handler."""
        round_ = statement.round
        held = self._held is not None and round_ == self._held.round
        if not (held or self.low <= round_ <= self.low + self.max_ahead):
            self._exclude(round_, peer, ReasonCode.WRONG_ROUND, "vote for a round not open here")
            return
        if peer not in statement.contributors or peer not in self.policy.members:
            self._exclude(round_, peer, ReasonCode.UNKNOWN_PEER, "vote by a non-contributor")
            return
        data = statement.signed_bytes()
        if not self.signer.verify(peer, data, signature):
            self._exclude(round_, peer, ReasonCode.BAD_SIGNATURE, "vote signature fails")
            return
        votes = self._votes.setdefault(round_, {})
        if peer in votes and votes[peer][0] != data:
            self._exclude(round_, peer, ReasonCode.DUPLICATE, "two different votes for one round")
            return
        votes[peer] = (data, signature, statement.digest)
        self._arrived.set()
        if held:
            self._settle()

    def _settle(self) -> None:
        """Certify the held statement once its votes reach the quorum, and hand it on."""
        assert self._held is not None
        certificate = assemble(self._held, self._agreeing(self._held).items())
        try:
            self.policy.check(certificate, self.me)
        except P2PFedError:
            return  # still below the quorum
        self._held = None
        log.info("round %d certified by votes that came late", certificate.round)
        if self.on_certified is not None:
            self.on_certified(certificate)

    def _exclude(self, round_: int, peer: str, reason: ReasonCode, detail: str) -> None:
        log.info("commit vote from %s for round %d refused: %s", peer, round_, detail)
        self.exclusions.append(Exclusion(round_, peer, reason, detail))

    async def _handle(self, stream: Stream) -> None:
        peer = stream.remote_peer
        try:
            payload = (await read_one_frame(stream, timeout=self.timeout)).payload
            if len(payload) <= _SIG:
                raise RemoteProtocolError(ReasonCode.MALFORMED, "not a commit vote", peer)
            statement = decode_statement(payload[:-_SIG], peer)
            if statement.consortium != self.policy.consortium:
                raise RemoteProtocolError(
                    ReasonCode.WRONG_CONSORTIUM, "vote for another consortium", peer
                )
            self._record(peer, statement, payload[-_SIG:])
        except RemoteProtocolError as exc:
            self.exclusions.append(Exclusion(-1, peer, exc.reason, str(exc)))
        except P2PFedError as exc:  # a broken stream is the sender's loss
            log.debug("commit vote from %s not received: %s", peer, exc)

    async def _send(self, peer: str, payload: bytes, round_: int) -> None:
        frame = Frame(FrameType.CONTROL, self.policy.consortium, round_, self.me, 0, payload)
        try:
            with trio.fail_after(self.send_timeout):
                stream = await self.transport.open_stream(peer, CERT_PROTOCOL)
                async with stream:
                    await write_frame(stream, frame, timeout=self.send_timeout)
                    await stream.send_eof()
        except (P2PFedError, trio.TooSlowError) as exc:
            log.info("commit vote to %s not delivered: %s", peer, exc)

    async def certify(self, statement: CommitStatement) -> CommitCertificate:
        """Vote for ``statement`` and gather the other contributors' votes (see module)."""
        signature = self.signer.sign(statement.signed_bytes())
        self._held = None  # a new model: the last one's certificate no longer matters
        self.low = max(self.low, statement.round)
        for old in [r for r in self._votes if r < self.low]:
            del self._votes[old]
        self._votes.setdefault(statement.round, {})[self.me] = (
            statement.signed_bytes(),
            signature,
            statement.digest,
        )
        payload = statement.encode() + signature
        others: Sequence[str] = [p for p in statement.contributors if p != self.me]
        async with trio.open_nursery() as nursery:
            for peer in others:
                nursery.start_soon(self._send, peer, payload, statement.round)
            with trio.move_on_after(self.timeout):
                while len(self._agreeing(statement)) < len(statement.contributors):
                    self._arrived = trio.Event()
                    await self._arrived.wait()
        return assemble(statement, self._agreeing(statement).items())

    def _agreeing(self, statement: CommitStatement) -> dict[str, bytes]:
        data = statement.signed_bytes()
        votes = self._votes.get(statement.round, {})
        return {peer: sig for peer, (signed, sig, _) in votes.items() if signed == data}

    def outvoted(self, statement: CommitStatement) -> bytes | None:
        """The model digest a quorum of this round's contributors signed instead of ours.

        Every vote counted here verified and came from a named contributor, so no member (nor
        a stolen key) alone can make this member drop its model: it takes a quorum.
        """
        tally: dict[bytes, int] = {}
        for _, _, digest in self._votes.get(statement.round, {}).values():
            if digest != statement.digest:
                tally[digest] = tally.get(digest, 0) + 1
        needed = commit_quorum(len(statement.contributors), self.policy.floor)
        return next((d for d, n in tally.items() if n >= needed), None)

    async def certify_round(
        self, round_: int, digest: bytes, contributors: frozenset[str]
    ) -> CommitCertificate | None:
        """The cohort's certificate for this round's model ``digest``; None below quorum."""
        statement = CommitStatement(
            self.policy.consortium,
            self.policy.roster_version,
            round_,
            digest,
            tuple(sorted(contributors)),
        )
        certificate = await self.certify(statement)
        try:
            self.policy.check(certificate, self.me)
        except P2PFedError as exc:
            theirs = self.outvoted(statement)
            if theirs is not None:  # our sum went onto another base model: ours is not theirs
                raise IntegrityError(
                    f"round {round_}: a quorum of the cohort certified model "
                    f"{theirs.hex()[:16]}, not this member's {digest.hex()[:16]} (it summed "
                    "onto another base model); not adopted, catching up"
                ) from None
            log.warning("round %d uncertified for now (late votes still count): %s", round_, exc)
            self._held = statement
            return None
        return certificate


__all__ = ["CERT_PROTOCOL", "CertificateService"]

"""Commit certificates: the cohort's signatures that a round's model is the agreed one.

Theory of operation (sans-I/O): after a committed round every cohort member signs a
``CommitStatement`` (consortium, roster version, round, SHA-256 of the shared weights after
the round, and the sorted contributors) with its Ed25519 identity key. A
``CommitCertificate`` is that statement with at least ``commit_quorum`` valid signatures by
distinct contributors. ``CertificatePolicy.check`` decides whether a certificate may be
trusted: the consortium and roster version are ours, every contributor is a member of the
roster in force, and enough of them signed this exact statement.

Roster switches: members take a new roster version one by one, so the rounds the others ran
under the old version just before are the consortium's rounds. ``RosterHandover`` keeps the
version before ours (its members and keys) and trusts its certificates for the rounds before
the first one certified under ours (``current_from``): valid under the old roster, and run
while it was still the one in force.

Quorum: more than half of the round's cohort, and never fewer than ``floor`` (2 by default).
The majority is the cohort's own commit rule (a round commits only when every cohort member
reported its ring done, so an honest member signs only what it computed itself); the floor
stops a single member from certifying a "cohort" of itself. Who can forge one: a coalition
of ``floor`` members holding their keys can sign a statement about a cohort of exactly
themselves; one stolen key cannot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pfed.collectives.messages import MAX_COHORT, MAX_PEER_ID
from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.wire.reader import BodyReader

CERT_VERSION = 1
_DOMAIN = b"p2pfed-commit-v1\n"
_MAX_ROUND = (1 << 62) - 1
_HEAD = struct.Struct(">BQq32sH")  # version, roster version, round, digest, contributors
_SIG = 64
_U16 = struct.Struct(">H")


def commit_quorum(cohort: int, floor: int = 2) -> int:
    """Signatures a certificate for a cohort of ``cohort`` members needs (see the module)."""
    return max(cohort // 2 + 1, floor)


def _text(value: str, what: str) -> bytes:
    raw = value.encode()
    if not 0 < len(raw) <= MAX_PEER_ID:
        raise LocalProtocolError(f"{what} must be 1..{MAX_PEER_ID} bytes of UTF-8, got {value!r}")
    return raw


@dataclass(frozen=True, slots=True)
class CommitStatement:
    """What the cohort of one committed round signs."""

    consortium: str
    roster_version: int
    round: int
    digest: bytes
    contributors: tuple[str, ...]

    def __post_init__(self) -> None:
        _text(self.consortium, "a certificate's consortium")
        if not 0 <= self.roster_version < 1 << 63:
            raise LocalProtocolError(f"roster version {self.roster_version} is out of range")
        if not 0 <= self.round <= _MAX_ROUND:
            raise LocalProtocolError(f"certified round {self.round} is outside 0..2^62-1")
        if len(self.digest) != 32:
            raise LocalProtocolError(f"a model digest is 32 bytes, got {len(self.digest)}")
        if not 0 < len(self.contributors) <= MAX_COHORT:
            raise LocalProtocolError(f"a certificate names 1..{MAX_COHORT} contributors")
        for peer in self.contributors:
            _text(peer, "a contributor")
        if list(self.contributors) != sorted(set(self.contributors)):
            raise LocalProtocolError("a certificate's contributors must be sorted and distinct")

    def encode(self) -> bytes:
        """Canonical bytes: fixed head, consortium, then each contributor, length-prefixed."""
        head = _HEAD.pack(
            CERT_VERSION, self.roster_version, self.round, self.digest, len(self.contributors)
        )
        parts = [head, _lp(self.consortium.encode())]
        parts += [_lp(p.encode()) for p in self.contributors]
        return b"".join(parts)

    def signed_bytes(self) -> bytes:
        """The exact bytes each contributor signs (domain-separated from every other use)."""
        return _DOMAIN + self.encode()

    @property
    def hash(self) -> str:
        """SHA-256 of the signed bytes (hex): names the statement in the audit log."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()


def _lp(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """A statement with its signatures, sorted by signer, at most one per contributor."""

    statement: CommitStatement
    signatures: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        signers = [peer for peer, _ in self.signatures]
        if signers != sorted(set(signers)):
            raise LocalProtocolError("a certificate's signers must be sorted and distinct")
        for peer, signature in self.signatures:
            if peer not in self.statement.contributors:
                raise LocalProtocolError(f"certificate signer {peer} is not a contributor")
            if len(signature) != _SIG:
                raise LocalProtocolError(f"signature of {peer} is not {_SIG} bytes")

    @property
    def round(self) -> int:
        """The certified round."""
        return self.statement.round

    @property
    def digest(self) -> bytes:
        """The certified weights digest."""
        return self.statement.digest

    def encode(self) -> bytes:
        """Statement, then (contributor index, signature) pairs."""
        index = {p: i for i, p in enumerate(self.statement.contributors)}
        sigs = b"".join(struct.pack(">H", index[p]) + s for p, s in self.signatures)
        return self.statement.encode() + struct.pack(">H", len(self.signatures)) + sigs

    @classmethod
    def decode(cls, data: bytes, peer: str) -> CommitCertificate:
        """Parse one; ``RemoteProtocolError(MALFORMED)`` naming ``peer`` if it is not one."""
        r = BodyReader(data, f"commit certificate from {peer}", peer)
        version, roster_version, round_, digest, count = r.unpack(_HEAD)
        if version != CERT_VERSION:
            raise r.malformed(f"has unknown version {version}")
        if not 0 < count <= MAX_COHORT:
            raise r.malformed(f"names {count} contributors")
        consortium = r.short()
        contributors = tuple(r.short() for _ in range(count))
        (nsig,) = r.unpack(_U16)
        if nsig > count:
            raise r.malformed(f"has {nsig} signatures for {count} contributors")
        signatures = []
        for _ in range(nsig):
            (i,) = r.unpack(_U16)
            if i >= count:
                raise r.malformed("has a signature by a peer it does not name")
            signatures.append((contributors[i], r.take(_SIG)))
        if r.at != len(data):
            raise r.malformed("has trailing bytes")
        try:
            statement = CommitStatement(consortium, roster_version, round_, digest, contributors)
            return cls(statement, tuple(sorted(signatures)))
        except LocalProtocolError as exc:
            raise r.malformed(f"is invalid: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """What the audit log records: no peer IDs (it names peers by salted hash only)."""
        s = self.statement
        return {
            "statement": s.hash,
            "roster_version": s.roster_version,
            "model_digest": s.digest.hex(),
            "contributors": len(s.contributors),
            "signers": len(self.signatures),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON form for checkpoints, and the model registry."""
        s = self.statement
        return {
            "consortium": s.consortium,
            "roster_version": s.roster_version,
            "round": s.round,
            "model_digest": s.digest.hex(),
            "contributors": list(s.contributors),
            "signatures": {peer: sig.hex() for peer, sig in self.signatures},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitCertificate:
        """Inverse of ``to_dict``; ``ValueError`` naming what is wrong."""
        try:
            statement = CommitStatement(
                str(data["consortium"]),
                int(data["roster_version"]),
                int(data["round"]),
                bytes.fromhex(str(data["model_digest"])),
                tuple(str(p) for p in data["contributors"]),
            )
            signatures = data["signatures"].items()
            sigs = tuple(sorted((str(p), bytes.fromhex(str(s))) for p, s in signatures))
            return cls(statement, sigs)
        except (KeyError, TypeError, ValueError, AttributeError, LocalProtocolError) as exc:
            raise ValueError(f"not a commit certificate: {exc}") from None


def decode_statement(data: bytes, peer: str) -> CommitStatement:
    """A bare statement (as in a vote); ``RemoteProtocolError(MALFORMED)`` naming ``peer``."""
    return CommitCertificate.decode(data + struct.pack(">H", 0), peer).statement


def assemble(statement: CommitStatement, votes: Iterable[tuple[str, bytes]]) -> CommitCertificate:
    """A certificate from ``votes`` (signer, signature), keeping contributors' only."""
    by_peer = {p: s for p, s in votes if p in statement.contributors}
    return CommitCertificate(statement, tuple(sorted(by_peer.items())))


class RosterHandover:
    """The roster version before ours, trusted for the rounds it ran (see the module)."""

    def __init__(self) -> None:
        self.before: tuple[int, frozenset[str], CohortSigner] | None = None
        self.current_from: int | None = None
        """The first round certified under our version that this member has seen."""

    def follow(self, version: int, members: frozenset[str], verifier: CohortSigner) -> None:
        """Trust ``version`` (its ``members``, keys in ``verifier``) for rounds before ours."""
        self.before = (version, members, verifier)

    def certified(self, round_: int) -> None:
        """A round certified under our version: older versions' rounds from it on are stale."""
        self.current_from = round_ if self.current_from is None else min(self.current_from, round_)

    def rules_for(self, version: int, round_: int) -> tuple[frozenset[str], CohortSigner] | None:
        """The members and keys a certificate of ``version`` for ``round_`` is judged by."""
        if self.before is None or self.before[0] != version:
            return None
        if self.current_from is not None and round_ >= self.current_from:
            return None
        return self.before[1], self.before[2]


@dataclass(frozen=True)
class CertificatePolicy:
    """What a certificate must satisfy here: our consortium, our roster, the quorum."""

    consortium: str
    roster_version: int
    members: frozenset[str]
    verifier: CohortSigner
    floor: int = 2
    handover: RosterHandover = field(default_factory=RosterHandover, compare=False)

    def valid_signers(
        self,
        certificate: CommitCertificate,
        rules: tuple[frozenset[str], CohortSigner] | None = None,
    ) -> list[str]:
        """The contributors whose signatures over the statement verify (under ``rules``)."""
        members, verifier = rules or (self.members, self.verifier)
        data = certificate.statement.signed_bytes()
        return [
            peer
            for peer, sig in certificate.signatures
            if peer in members and verifier.verify(peer, data, sig)
        ]

    def check(self, certificate: CommitCertificate, peer: str) -> None:
        """Raise ``RemoteProtocolError`` naming ``peer`` unless the certificate holds."""
        s = certificate.statement

        def refuse(reason: ReasonCode, why: str) -> RemoteProtocolError:
            return RemoteProtocolError(
                reason, f"commit certificate from {peer} for round {s.round} {why}", peer
            )

        if s.consortium != self.consortium:
            raise refuse(ReasonCode.WRONG_CONSORTIUM, f"is for consortium {s.consortium!r}")
        rules = None
        if s.roster_version != self.roster_version:
            rules = self.handover.rules_for(s.roster_version, s.round)
            if rules is None:
                raise refuse(
                    ReasonCode.PROTOCOL_VIOLATION,
                    f"is for roster version {s.roster_version}, not {self.roster_version} "
                    "(nor the version before it, for a round before ours took over)",
                )
        strangers = sorted(set(s.contributors) - (rules or (self.members,))[0])
        if strangers:
            raise refuse(ReasonCode.UNKNOWN_PEER, f"names non-members {', '.join(strangers)}")
        valid = self.valid_signers(certificate, rules)
        needed = commit_quorum(len(s.contributors), self.floor)
        if len(valid) < needed:
            raise refuse(
                ReasonCode.BAD_SIGNATURE,
                f"has {len(valid)} valid signatures of {len(s.contributors)} contributors, "
                f"{needed} needed",
            )
        if rules is None:
            self.handover.certified(s.round)


__all__ = [
    "CertificatePolicy",
    "CommitCertificate",
    "CommitStatement",
    "RosterHandover",
    "assemble",
    "commit_quorum",
    "decode_statement",
]

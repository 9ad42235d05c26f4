"""Verifying an audit log: pure, names the first bad entry or returns the head hash.

Theory of operation: ``verify_entries`` reads a log's bytes line by line and checks, in
this order, that each line is whole and well formed, signed by the key the caller trusts
(the roster's, a given one, or the first entry's), validly signed, in canonical form, in
sequence and chained to the entry before. The first failure ends the walk with a
``Problem`` naming the line, sequence number and kind; what verified so far (count,
signer, head) is still reported, so a node can tell a torn last line from damage.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from p2pfed.canonical import canonical_json
from p2pfed.errors import ConfigError
from p2pfed.governance.audit.entries import (
    ENTRY_FIELDS,
    FORMAT_VERSION,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    EntryKind,
    entry_hash,
    is_hex,
    signing_message,
)
from p2pfed.identity import Roster, check_roster, peer_id_from_public_key, verify_signature


class ProblemKind(enum.StrEnum):
    """What is wrong with the first bad entry of a log."""

    TORN = "torn-line"
    MALFORMED = "malformed"
    MISSING_SIGNATURE = "missing-signature"
    BAD_SIGNATURE = "bad-signature"
    SIGNER_MISMATCH = "signer-mismatch"
    KEY_CHANGED = "key-changed"
    UNTRUSTED_KEY = "untrusted-key"
    NOT_A_MEMBER = "not-a-member"
    MISSING_ENTRIES = "missing-entries"
    REORDERED = "reordered"
    DUPLICATE = "duplicate"
    CHAIN_BREAK = "chain-break"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad entry: where it is and what is wrong with it."""

    line: int
    seq: int | None
    kind: ProblemKind
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"line": self.line, "seq": self.seq, "kind": self.kind.value, "msg": self.message}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of ``verify_log``."""

    path: str
    entries: int
    """Entries that verified (all of them when ``ok``)."""
    problem: Problem | None
    signer: str | None
    head: str
    """Hash of the last good entry: what the next entry's ``prev`` must be."""
    trust: str
    """How the signing key was checked: ``roster``, ``public-key`` or ``self`` (first entry)."""

    @property
    def ok(self) -> bool:
        """True when every entry verified."""
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for ``p2pfed audit verify --json``)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "entries": self.entries,
            "signer": self.signer,
            "head": self.head,
            "trust": self.trust,
            "problem": self.problem.to_dict() if self.problem else None,
        }

    def summary(self) -> str:
        """One line for people."""
        if self.problem is None:
            return (
                f"{self.path}: OK, {self.entries} entries signed by {self.signer} "
                f"(key checked against {self.trust}), head {self.head[:16]}"
            )
        p = self.problem
        seq = "?" if p.seq is None else str(p.seq)
        return f"{self.path}: BAD at line {p.line} (seq {seq}): {p.kind.value}: {p.message}"


Finding = tuple[ProblemKind, str] | None
"""A check's verdict on one entry: None, or what is wrong with it."""


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    entry: dict[str, Any] | None
    error: str | None
    raw: bytes = b""


def _split_lines(data: bytes) -> tuple[list[_Line], bool]:
    """Parsed lines and whether the last one lacks its newline (a torn write)."""
    pieces = data.split(b"\n")
    torn = pieces[-1] != b""
    if not torn:
        pieces.pop()
    lines = []
    for number, raw in enumerate(pieces, start=1):
        if len(raw) > MAX_LINE_BYTES:
            lines.append(_Line(number, None, f"line is {len(raw)} bytes, over the limit"))
            continue
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            lines.append(_Line(number, None, f"not valid JSON ({exc.__class__.__name__})"))
            continue
        if not isinstance(value, dict):
            lines.append(_Line(number, None, "not a JSON object"))
            continue
        lines.append(_Line(number, value, None, raw))
    return lines, torn


def _later_seqs(lines: list[_Line]) -> list[set[int]]:
    """Per line, the sequence numbers of the lines after it (to tell reordered from cut)."""
    after: list[set[int]] = [set() for _ in lines]
    later: set[int] = set()
    for i in range(len(lines) - 1, -1, -1):
        after[i] = set(later)
        entry = lines[i].entry
        if entry is not None and isinstance(entry.get("seq"), int):
            later.add(entry["seq"])
    return after


def _shape_error(entry: Mapping[str, Any]) -> str | None:
    missing = ENTRY_FIELDS - entry.keys() - {"sig"}
    if missing:
        return f"field(s) {', '.join(sorted(missing))} missing"
    extra = entry.keys() - ENTRY_FIELDS
    if extra:
        return f"unexpected field(s) {', '.join(sorted(extra))}"
    if entry["v"] != FORMAT_VERSION:
        return f"format version {entry['v']!r} is not {FORMAT_VERSION}"
    seq = entry["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "seq must be a non-negative integer"
    if not isinstance(entry["ts"], int | float) or isinstance(entry["ts"], bool):
        return "ts must be a number"
    if entry["kind"] not in EntryKind.__members__.values():
        return f"kind {entry['kind']!r} is unknown"
    if not isinstance(entry["body"], dict):
        return "body must be an object"
    for name, size in (("prev", 32), ("key", 32)):
        if not is_hex(entry[name], size):
            return f"{name} must be {size * 2} hex digits"
    if not isinstance(entry["signer"], str):
        return "signer must be a peer ID string"
    return None


def _form_problem(line: _Line, torn: bool) -> Finding:
    """A torn, unreadable, unsigned or misshapen line."""
    if torn:
        return ProblemKind.TORN, "the last line is incomplete (a torn write)"
    if line.entry is None:
        return ProblemKind.MALFORMED, line.error or "unreadable"
    if not line.entry.get("sig"):
        return ProblemKind.MISSING_SIGNATURE, "the entry carries no signature"
    shape = _shape_error(line.entry)
    return None if shape is None else (ProblemKind.MALFORMED, shape)


def _trust_problem(
    entry: Mapping[str, Any], members: Mapping[str, bytes] | None, public_key: bytes | None
) -> Finding:
    """A key that is not the signer's, or not the one the caller trusts."""
    key = bytes.fromhex(entry["key"])
    signer = entry["signer"]
    if signer != peer_id_from_public_key(key):
        return ProblemKind.SIGNER_MISMATCH, f"signer {signer} is not the peer ID of the entry's key"
    if members is not None:
        if signer not in members:
            return ProblemKind.NOT_A_MEMBER, f"signer {signer} is not in the roster"
        if members[signer] != key:
            return (
                ProblemKind.UNTRUSTED_KEY,
                f"signer {signer} signed with a key the roster does not list",
            )
    if public_key is not None and key != public_key:
        return (
            ProblemKind.UNTRUSTED_KEY,
            f"signed by key {entry['key'][:16]}…, not the expected {public_key.hex()[:16]}…",
        )
    return None


def _content_problem(entry: Mapping[str, Any], raw: bytes, check_signature: bool) -> Finding:
    """A signature that does not match, or a line rewritten after signing."""
    if check_signature and not (
        is_hex(entry["sig"], 64)
        and verify_signature(
            bytes.fromhex(entry["key"]), signing_message(entry), bytes.fromhex(entry["sig"])
        )
    ):
        return ProblemKind.BAD_SIGNATURE, "the signature does not match the entry"
    if raw != canonical_json(entry):
        return (
            ProblemKind.MALFORMED,
            "the line is not in canonical form (it was rewritten after signing)",
        )
    return None


def _order_problem(seq: int, expected: int, later: set[int]) -> Finding:
    """A sequence number that repeats, comes early, or skips removed entries."""
    if seq == expected:
        return None
    if seq < expected:  # every sequence number below ``expected`` has appeared
        return ProblemKind.DUPLICATE, f"sequence {seq} already appeared earlier"
    if expected in later:
        return (
            ProblemKind.REORDERED,
            f"sequence {seq} comes before {expected}: entries were reordered",
        )
    gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
    return (
        ProblemKind.MISSING_ENTRIES,
        f"sequence jumps from {expected - 1} to {seq}: entries {gap} were removed",
    )


def _chain_problem(entry: Mapping[str, Any], head: str) -> Finding:
    """A ``prev`` that is not the hash of the entry before."""
    if entry["prev"] == head:
        return None
    return (
        ProblemKind.CHAIN_BREAK,
        "prev does not match the hash of the entry before it (that entry was altered)",
    )


@dataclass(slots=True)
class _Walk:
    """What verified so far: the head, the log's key and signer, the count."""

    path: str
    trust: str
    head: str = GENESIS_HASH
    key: str | None = None
    signer: str | None = None
    good: int = 0

    def adopt_key(self, entry: Mapping[str, Any]) -> Finding:
        """The first entry's key is the log's; every later entry must carry it."""
        if self.key is None:
            self.key, self.signer = entry["key"], entry["signer"]
            return None
        if entry["key"] != self.key:
            return (
                ProblemKind.KEY_CHANGED,
                f"signed by {entry['signer']}, not by the log's signer {self.signer}",
            )
        return None

    def report(self, line: _Line | None = None, finding: Finding = None) -> VerifyReport:
        """The report as of now; with ``finding``, naming ``line`` as the first bad one."""
        problem = None
        if finding is not None:
            number, seq = 0, None
            if line is not None:
                raw_seq = line.entry.get("seq") if line.entry is not None else None
                number, seq = line.number, raw_seq if isinstance(raw_seq, int) else None
            problem = Problem(number, seq, *finding)
        return VerifyReport(self.path, self.good, problem, self.signer, self.head, self.trust)


def verify_entries(
    data: bytes,
    path: str = "audit log",
    *,
    public_key: bytes | None = None,
    members: Mapping[str, bytes] | None = None,
    check_signatures: str = "all",
) -> VerifyReport:
    """Verify a whole log's bytes; see ``verify_log``.

    ``check_signatures`` is ``"all"`` or ``"last"``: checking the chain on every entry and
    the signature of the last one suffices to detect edits (an edited entry changes its
    hash, which the next entry's ``prev`` pins) and is what a node does on start-up.
    """
    if check_signatures not in ("all", "last"):
        raise ConfigError("check_signatures must be 'all' or 'last'")
    trust = "roster" if members is not None else "public-key" if public_key else "self"
    walk = _Walk(path, trust)
    lines, torn = _split_lines(data)
    if not lines:
        return walk.report(None, (ProblemKind.EMPTY, "the log has no entries"))
    later = _later_seqs(lines)
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        finding = _form_problem(line, last and torn)
        entry = line.entry
        if finding is None and entry is not None:
            finding = (
                _trust_problem(entry, members, public_key)
                or walk.adopt_key(entry)
                or _content_problem(entry, line.raw, check_signatures == "all" or last)
                or _order_problem(entry["seq"], walk.good, later[index])
                or _chain_problem(entry, walk.head)
            )
        if finding is not None or entry is None:
            return walk.report(line, finding)
        walk.head = entry_hash(entry)
        walk.good += 1
    return walk.report()


def verify_log(
    path: str | os.PathLike[str],
    *,
    public_key: bytes | None = None,
    members: Mapping[str, bytes] | None = None,
) -> VerifyReport:
    """Check every entry of the log at ``path``; the report names the first bad one.

    With ``members`` (peer ID → public key, e.g. from the roster) the signer must be a
    member with that key; with ``public_key`` the log must be signed by it; with neither,
    the first entry's key is taken as the log's and every later entry must match it.
    Raises ``ConfigError`` if the file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read audit log {path}: {exc.strerror}") from None
    return verify_entries(data, str(path), public_key=public_key, members=members)


def roster_members(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Peer ID → public key of the members of the roster file at ``path``.

    The roster's own admin signatures and threshold are checked (a forged roster must not
    vouch for a forged log), but not its expiry: an audit reads old logs against the
    roster of their time.
    """
    roster = Roster.load(path)
    just_before_expiry = roster.expires_at - timedelta(microseconds=1)
    check_roster(roster, now=min(datetime.now(UTC), just_before_expiry), accepted=None)
    return {m.peer_id: m.public_key for m in roster.members}

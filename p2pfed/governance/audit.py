"""The node's audit log: append-only JSONL, hash-chained and Ed25519-signed.

Theory of operation: every governance-relevant event (daemon start/stop, round start/end,
the round's cohort, the resulting model hash, DP parameters and ε, roster changes,
exclusions, drift alerts) becomes one JSON line::

    {"v":1,"seq":7,"ts":1764270000.0,"kind":"dp","body":{...},
     "prev":"<sha256 of line 6's canonical JSON>","signer":"12D3Koo...",
     "key":"<ed25519 public key hex>","sig":"<ed25519 signature hex>"}

*Canonical JSON* is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)``. ``sig`` signs ``SIGNING_DOMAIN`` + the canonical JSON of the entry
without ``sig``; ``prev`` is the SHA-256 of the previous entry's canonical JSON *with*
its signature (64 zeros for the first entry). So editing any entry breaks its signature,
and deleting, reordering or inserting entries breaks the sequence numbers and the chain;
only the node's private key can extend the log. What the chain alone cannot show is that
the *last* entries were cut off: comparing heads and model hashes across members
(``compare_logs``) covers that.

Peer IDs in bodies (cohort, exclusions, roster changes) are never stored raw: they are
HMAC-SHA256(salt, peer ID) under the node's own secret salt (``audit.salt``, 32 random
bytes made at ``init``), so the node — and whoever it gives the salt — can re-identify
peers while a leaked log, even with the roster and config beside it, does not reveal who
took part. Logs are compared across members on model hashes, which are not salted. The
signer's own peer ID is in clear, since verification needs it.

Writing is durable: each append is written, flushed and fsynced before ``append`` returns.
Opening an existing log re-checks its whole chain and the last entry's signature and
refuses to continue a broken log (``IntegrityError``); an exclusive ``flock`` keeps a second
process from appending to the same file.

Verification (``verify_log``) is pure: it reads the file and names the *first* bad entry
(line, sequence, kind of problem) or returns a clean report with the head hash.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from p2pfed.durable import fsync_dir
from p2pfed.errors import ConfigError, IntegrityError, LocalError, ReasonCode
from p2pfed.identity import Roster, check_roster, peer_id_from_public_key, verify_signature

if TYPE_CHECKING:
    from p2pfed.identity import Identity

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"p2pfed audit entry v1\x00"
GENESIS_HASH = "0" * 64
MAX_LINE_BYTES = 1 << 20
"""A cohort of thousands of hashed peer IDs fits; a line beyond this is treated as damage."""
MIN_SALT_BYTES = 16
_LOWER_HEX = re.compile(r"[0-9a-f]*")

ENTRY_FIELDS = frozenset({"v", "seq", "ts", "kind", "body", "prev", "signer", "key", "sig"})

Clock = Callable[[], float]
JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


class EntryKind(enum.StrEnum):
    """What an audit entry records."""

    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    ROUND_START = "round_start"
    ROUND_END = "round_end"
    COHORT = "cohort"
    MODEL_VERSION = "model_version"
    DP = "dp"
    ROSTER_VERSION = "roster_version"
    ROSTER_CHANGE = "roster_change"
    EXCLUSION = "exclusion"
    DRIFT_ALERT = "drift_alert"


class Signer(Protocol):
    """What signs audit entries; ``p2pfed.identity.Identity`` satisfies it."""

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID of ``public_key``."""

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""


if TYPE_CHECKING:

    def _identity_signs(identity: Identity) -> Signer:
        return identity  # mypy proves the identity engineer's Identity satisfies Signer


# --- pure helpers -----------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The canonical encoding hashed and signed: sorted keys, no whitespace, ASCII only.

    Raises ``LocalError`` for values JSON cannot carry exactly (NaN, infinity, objects).
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise LocalError(f"audit entry is not canonical JSON: {exc}") from None
    return text.encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON, signature included: the next ``prev``."""
    return hashlib.sha256(canonical_json(entry)).hexdigest()


def signing_message(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's signature covers: the domain tag and the entry without ``sig``."""
    return SIGNING_DOMAIN + canonical_json({k: v for k, v in entry.items() if k != "sig"})


def hash_peer_id(salt: bytes, peer_id: str) -> str:
    """HMAC-SHA256(salt, peer ID) in hex: how peer IDs appear in audit bodies."""
    return hmac.new(salt, peer_id.encode("utf-8"), hashlib.sha256).hexdigest()


def generate_salt() -> bytes:
    """32 random bytes for a node's secret peer-ID salt."""
    return secrets.token_bytes(32)


SALT_FILE = "audit.salt"
"""The node's secret audit salt: beside its identity key, mode 0600, never in the config."""


def create_salt_file(path: str | os.PathLike[str]) -> bytes:
    """Write a new secret salt to ``path`` (hex, mode 0600); never replaces an existing one."""
    from p2pfed.durable import atomic_write

    salt = generate_salt()
    atomic_write(Path(path), salt.hex().encode() + b"\n", 0o600, overwrite=False)
    return salt


def read_salt_file(path: str | os.PathLike[str]) -> bytes:
    """The salt in ``path``; ``ConfigError`` if others may read it or it is malformed."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit salt {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(
            f"the audit salt {path} has permissions {mode:o}; it must be private (chmod 600)"
        )
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        salt = b""
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError(f"the audit salt {path} must hold at least {MIN_SALT_BYTES} hex bytes")
    return salt


def _finite(value: float, what: str) -> float | str:
    # ε is infinite when no noise is added; JSON has no infinity, so it is spelt out.
    if math.isnan(value):
        raise LocalError(f"{what} is NaN and cannot be audited")
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


# --- verification -----------------------------------------------------------------------


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
        if not _is_hex(entry[name], size):
            return f"{name} must be {size * 2} hex digits"
    if not isinstance(entry["signer"], str):
        return "signer must be a peer ID string"
    return None


def _is_hex(value: object, size: int) -> bool:
    # Lower-case only: one spelling per value, so the bytes of a verified line are unique.
    return (
        isinstance(value, str)
        and _LOWER_HEX.fullmatch(value) is not None
        and (len(value) == 2 * size)
    )


def _signature_ok(entry: Mapping[str, Any]) -> bool:
    sig = entry["sig"]
    if not _is_hex(sig, 64):
        return False
    return verify_signature(bytes.fromhex(entry["key"]), signing_message(entry), bytes.fromhex(sig))


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
    lines, torn = _split_lines(data)
    seqs_after: list[set[int]] = [set() for _ in lines]
    later: set[int] = set()
    for i in range(len(lines) - 1, -1, -1):
        seqs_after[i] = set(later)
        entry = lines[i].entry
        if entry is not None and isinstance(entry.get("seq"), int):
            later.add(entry["seq"])
    seen: set[int] = set()
    prev = GENESIS_HASH
    log_key: str | None = None
    signer: str | None = None
    good = 0

    def bad(line: _Line, kind: ProblemKind, message: str) -> VerifyReport:
        seq = line.entry.get("seq") if line.entry is not None else None
        problem = Problem(line.number, seq if isinstance(seq, int) else None, kind, message)
        return VerifyReport(path, good, problem, signer, prev, trust)

    if not lines:
        return VerifyReport(
            path,
            0,
            Problem(0, None, ProblemKind.EMPTY, "the log has no entries"),
            None,
            prev,
            trust,
        )
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        if last and torn:
            return bad(line, ProblemKind.TORN, "the last line is incomplete (a torn write)")
        if line.entry is None:
            return bad(line, ProblemKind.MALFORMED, line.error or "unreadable")
        entry = line.entry
        if not entry.get("sig"):
            return bad(line, ProblemKind.MISSING_SIGNATURE, "the entry carries no signature")
        shape = _shape_error(entry)
        if shape is not None:
            return bad(line, ProblemKind.MALFORMED, shape)
        key = bytes.fromhex(entry["key"])
        if entry["signer"] != peer_id_from_public_key(key):
            return bad(
                line,
                ProblemKind.SIGNER_MISMATCH,
                f"signer {entry['signer']} is not the peer ID of the entry's key",
            )
        if members is not None:
            if entry["signer"] not in members:
                return bad(
                    line, ProblemKind.NOT_A_MEMBER, f"signer {entry['signer']} is not in the roster"
                )
            if members[entry["signer"]] != key:
                return bad(
                    line,
                    ProblemKind.UNTRUSTED_KEY,
                    f"signer {entry['signer']} signed with a key the roster does not list",
                )
        if public_key is not None and key != public_key:
            return bad(
                line,
                ProblemKind.UNTRUSTED_KEY,
                f"signed by key {entry['key'][:16]}…, not the expected {public_key.hex()[:16]}…",
            )
        if log_key is None:
            log_key, signer = entry["key"], entry["signer"]
        elif entry["key"] != log_key:
            return bad(
                line,
                ProblemKind.KEY_CHANGED,
                f"signed by {entry['signer']}, not by the log's signer {signer}",
            )
        if (check_signatures == "all" or last) and not _signature_ok(entry):
            return bad(line, ProblemKind.BAD_SIGNATURE, "the signature does not match the entry")
        if line.raw != canonical_json(entry):
            return bad(
                line,
                ProblemKind.MALFORMED,
                "the line is not in canonical form (it was rewritten after signing)",
            )
        seq, expected = entry["seq"], len(seen)
        if seq != expected:
            if seq in seen:
                return bad(line, ProblemKind.DUPLICATE, f"sequence {seq} already appeared earlier")
            if expected in seqs_after[index]:
                return bad(
                    line,
                    ProblemKind.REORDERED,
                    f"sequence {seq} comes before {expected}: entries were reordered",
                )
            gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            return bad(
                line,
                ProblemKind.MISSING_ENTRIES,
                f"sequence jumps from {expected - 1} to {seq}: entries {gap} were removed",
            )
        if entry["prev"] != prev:
            return bad(
                line,
                ProblemKind.CHAIN_BREAK,
                "prev does not match the hash of the entry before it (that entry was altered)",
            )
        seen.add(seq)
        prev = entry_hash(entry)
        good += 1
    return VerifyReport(path, good, None, signer, prev, trust)


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


def read_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a log that verifies (``IntegrityError`` naming the first bad one)."""
    report = verify_log(path)
    if not report.ok:
        raise IntegrityError(f"audit log {report.summary()}")
    return [json.loads(line) for line in Path(path).read_bytes().splitlines()]


# --- writing ----------------------------------------------------------------------------


class AuditLog:
    """One node's audit log, open for appending.

    ``AuditLog(path, signer, salt=..., clock=...)`` creates the file or continues an
    existing one after checking it; use it as a context manager or call ``close``.
    Every ``append`` (and the typed helpers below) is durable when it returns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signer: Signer,
        *,
        salt: bytes,
        clock: Clock = time.time,
    ) -> None:
        if not isinstance(salt, bytes) or len(salt) < MIN_SALT_BYTES:
            raise ConfigError(f"the audit salt must be at least {MIN_SALT_BYTES} bytes")
        if signer.peer_id != peer_id_from_public_key(signer.public_key):
            raise ConfigError(f"signer peer ID {signer.peer_id} is not the ID of its public key")
        self.path = Path(path)
        self._signer = signer
        self._salt = salt
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        file = os.fdopen(fd, "r+b")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LocalError(
                    f"audit log {self.path} is open in another process; one writer at a time"
                ) from None
            self._next_seq, self._head = self._check_existing(file.read())
        except BaseException:
            file.close()
            raise
        self._file = file
        if created:
            fsync_dir(self.path.parent)

    def _check_existing(self, data: bytes) -> tuple[int, str]:
        if not data:
            return 0, GENESIS_HASH
        report = verify_entries(data, str(self.path), check_signatures="last")
        if report.problem is not None:
            raise IntegrityError(
                f"refusing to append to a broken audit log: {report.summary()}; "
                "keep the file for investigation and start a new log"
            )
        if report.signer != self._signer.peer_id:
            raise IntegrityError(
                f"audit log {self.path} was written by {report.signer}, not by this node "
                f"({self._signer.peer_id}); refusing to append"
            )
        return report.entries, report.head

    @property
    def next_seq(self) -> int:
        """The sequence number the next entry will carry."""
        return self._next_seq

    @property
    def head(self) -> str:
        """Hash of the last entry (``GENESIS_HASH`` for an empty log)."""
        return self._head

    def hash_peer(self, peer_id: str) -> str:
        """How ``peer_id`` appears in this consortium's audit bodies."""
        return hash_peer_id(self._salt, peer_id)

    def append(self, kind: EntryKind, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sign, chain and durably write one entry; returns it as written.

        Safe to call from several threads: appends are serialised, so sequence numbers
        and the chain stay in file order.
        """
        with self._lock:
            if self._file is None:
                raise LocalError(f"audit log {self.path} is closed")
            entry: dict[str, Any] = {
                "v": FORMAT_VERSION,
                "seq": self._next_seq,
                "ts": self._clock(),
                "kind": EntryKind(kind).value,
                "body": dict(body),
                "prev": self._head,
                "signer": self._signer.peer_id,
                "key": self._signer.public_key.hex(),
            }
            entry["sig"] = self._signer.sign(signing_message(entry)).hex()
            line = canonical_json(entry)
            if len(line) > MAX_LINE_BYTES:
                raise LocalError(
                    f"audit entry of {len(line)} bytes is over the {MAX_LINE_BYTES} limit"
                )
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._next_seq += 1
            self._head = entry_hash(entry)
            return entry

    # Typed helpers: the daemon calls these rather than building bodies itself, so every
    # log carries the same fields under the same names.

    def daemon_start(
        self, *, software_version: str, consortium: str, roster_version: int | None = None
    ) -> dict[str, Any]:
        """The daemon started."""
        return self.append(
            EntryKind.DAEMON_START,
            {
                "software_version": software_version,
                "consortium": consortium,
                "roster_version": roster_version,
            },
        )

    def daemon_stop(self, *, reason: str = "shutdown") -> dict[str, Any]:
        """The daemon is stopping (``reason``: shutdown, error, budget-exhausted …)."""
        return self.append(EntryKind.DAEMON_STOP, {"reason": reason})

    def round_start(self, round_number: int, *, roster_version: int, mode: str) -> dict[str, Any]:
        """A round began under roster ``roster_version`` in ``mode`` (ring, gossip …)."""
        return self.append(
            EntryKind.ROUND_START,
            {"round": round_number, "roster_version": roster_version, "mode": mode},
        )

    def round_end(
        self,
        round_number: int,
        *,
        outcome: str,
        duration_s: float,
        participants: int,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """A round finished (``outcome``: completed, failed, aborted; ``reason`` if not)."""
        body: dict[str, Any] = {
            "round": round_number,
            "outcome": outcome,
            "duration_s": _finite(duration_s, "round duration"),
            "participants": participants,
        }
        if reason is not None:
            body["reason"] = reason
        return self.append(EntryKind.ROUND_END, body)

    def cohort(self, round_number: int, peer_ids: Iterable[str]) -> dict[str, Any]:
        """The round's participants, as salted hashes (sorted, so order reveals nothing)."""
        hashed = sorted({self.hash_peer(p) for p in peer_ids})
        return self.append(
            EntryKind.COHORT, {"round": round_number, "size": len(hashed), "peers": hashed}
        )

    def model_version(
        self,
        round_number: int,
        *,
        model_hash: str,
        parent_hash: str | None,
        certificate: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The aggregated model the round produced (``model_hash`` from ``governance.models``).

        ``certificate``: the summary of its commit certificate (``CommitCertificate.summary``).
        """
        if not _is_hex(model_hash, 32) or (
            parent_hash is not None and not _is_hex(parent_hash, 32)
        ):
            raise LocalError("model hashes must be 64 hex digits (SHA-256)")
        body: dict[str, Any] = {
            "round": round_number,
            "model_hash": model_hash,
            "parent_hash": parent_hash,
        }
        if certificate is not None:
            body["certificate"] = dict(certificate)
        return self.append(EntryKind.MODEL_VERSION, body)

    def dp(
        self,
        round_number: int,
        *,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        delta: float,
        epsilon: float,
        accountant: str,
        steps: int = 1,
        ledger_head: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The round's DP mechanism parameters and the ε spent so far (after the round).

        ``ledger_head`` (releases, chain hash, ε of the privacy ledger) anchors the ledger:
        a ledger later found behind it or unlike it is refused at start.
        """
        body: dict[str, Any] = {
            "round": round_number,
            "noise_multiplier": _finite(noise_multiplier, "noise multiplier"),
            "clip_norm": _finite(clip_norm, "clip norm"),
            "sample_rate": _finite(sample_rate, "sample rate"),
            "steps": steps,
            "delta": _finite(delta, "delta"),
            "epsilon": _finite(epsilon, "epsilon"),
            "accountant": accountant,
        }
        if ledger_head is not None:
            body["ledger_head"] = dict(ledger_head)
        return self.append(EntryKind.DP, body)

    def roster_version(self, version: int, *, roster_digest: str) -> dict[str, Any]:
        """The roster in force (its version and digest)."""
        return self.append(
            EntryKind.ROSTER_VERSION, {"version": version, "roster_digest": roster_digest}
        )

    def roster_change(
        self,
        *,
        old_version: int,
        new_version: int,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The roster changed; added and removed peers are recorded hashed."""
        return self.append(
            EntryKind.ROSTER_CHANGE,
            {
                "old_version": old_version,
                "new_version": new_version,
                "added": sorted(self.hash_peer(p) for p in added),
                "removed": sorted(self.hash_peer(p) for p in removed),
            },
        )

    def exclusion(
        self, round_number: int, peer_id: str, reason: ReasonCode, detail: str = "", count: int = 1
    ) -> dict[str, Any]:
        """A peer was excluded from the round, with the reason code (never silently).

        ``count``: how many of its messages were refused for this reason in the round (one
        entry summarises them all, so a flood cannot grow the log per message).
        """
        body: dict[str, Any] = {
            "round": round_number,
            "peer": self.hash_peer(peer_id),
            "reason": ReasonCode(reason).value,
            "detail": detail,
        }
        if count != 1:
            body["count"] = count
        return self.append(EntryKind.EXCLUSION, body)

    def drift_alert(self, round_number: int, alert: Mapping[str, Any]) -> dict[str, Any]:
        """A drift alert (``DriftAlert.to_dict()``) raised in this round."""
        return self.append(EntryKind.DRIFT_ALERT, {"round": round_number, **alert})

    def close(self) -> None:
        """Release the lock and the file (idempotent)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- comparing members' logs ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Members recorded different model hashes for one round."""

    round: int
    hashes: dict[str, list[str]]
    """Model hash → the logs that recorded it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"round": self.round, "hashes": self.hashes}


@dataclass(frozen=True, slots=True)
class CompareReport:
    """The outcome of ``compare_logs``."""

    rounds: int
    """Rounds recorded by at least one log."""
    agreed: int
    """Rounds recorded by two or more logs, all with the same hash."""
    disagreements: list[Disagreement]
    missing: dict[str, list[int]]
    """Log → rounds other logs recorded but it did not (reported, not a disagreement)."""
    unverified: dict[str, str]
    """Log → why it failed verification (its entries are not compared)."""

    @property
    def ok(self) -> bool:
        """True when every log verified and no round has two hashes."""
        return not self.disagreements and not self.unverified

    @property
    def first_disagreement(self) -> Disagreement | None:
        """The lowest round with two or more hashes."""
        return self.disagreements[0] if self.disagreements else None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for ``p2pfed audit compare --json``)."""
        return {
            "ok": self.ok,
            "rounds": self.rounds,
            "agreed": self.agreed,
            "first_disagreement": (
                self.first_disagreement.to_dict() if self.first_disagreement else None
            ),
            "disagreements": [d.to_dict() for d in self.disagreements],
            "missing": self.missing,
            "unverified": self.unverified,
        }


def compare_logs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    members: Mapping[str, bytes] | None = None,
) -> CompareReport:
    """Check that the members' logs agree on every round's model hash.

    Each log is verified first; a log that fails is listed in ``unverified`` and left out.
    Rounds some logs lack are listed in ``missing``. A log that records two hashes for one
    round disagrees with itself and is reported like any other disagreement.
    """
    if len(paths) < 2:
        raise ConfigError("compare needs at least two audit logs")
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise ConfigError("the same audit log is listed twice")
    per_log: dict[str, dict[int, set[str]]] = {}
    unverified: dict[str, str] = {}
    for name in names:
        report = verify_log(name, members=members)
        if not report.ok:
            unverified[name] = report.summary()
            continue
        rounds: dict[int, set[str]] = {}
        for number, line in enumerate(Path(name).read_bytes().splitlines(), start=1):
            entry = json.loads(line)
            if entry["kind"] != EntryKind.MODEL_VERSION:
                continue
            body = entry["body"]
            rnd, model = body.get("round"), body.get("model_hash")
            if not isinstance(rnd, int) or not _is_hex(model, 32):
                unverified[name] = f"{name}: line {number}: model_version entry lacks round or hash"
                break
            rounds.setdefault(rnd, set()).add(model)
        else:
            per_log[name] = rounds
    all_rounds = sorted(set().union(*(r.keys() for r in per_log.values())))
    disagreements: list[Disagreement] = []
    missing: dict[str, list[int]] = {}
    agreed = 0
    for rnd in all_rounds:
        holders: dict[str, list[str]] = {}
        for name, rounds in per_log.items():
            if rnd not in rounds:
                missing.setdefault(name, []).append(rnd)
                continue
            for model_hash in sorted(rounds[rnd]):
                holders.setdefault(model_hash, []).append(name)
        if len(holders) > 1:
            disagreements.append(Disagreement(rnd, holders))
        elif sum(len(v) for v in holders.values()) > 1:
            agreed += 1
    return CompareReport(len(all_rounds), agreed, disagreements, missing, unverified)

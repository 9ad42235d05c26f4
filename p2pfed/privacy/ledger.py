r"""The per-node privacy ledger: a durable, checksummed record of every release.

Theory of operation. The ledger is an append-only file of JSON lines, each
``<sha256-hex-prefix> <json>\n``, where the hex prefix (128 bits) is the SHA-256 of the
JSON bytes. The first line is a header (format, mechanism); each further line is one
release (seq, round, σ, q, steps, S, mode, timestamp) with consecutive ``seq``. The spend
is always *recomputed* from the releases by an accountant, never stored, so there is no
counter to drift from the records.

``reserve(release)`` is called after clipping and *before* the noised update leaves the
node: it computes ε with the release added, refuses with ``BudgetExceededError`` if that
exceeds the budget, and otherwise writes the line with one ``write`` on an ``O_APPEND``
descriptor and ``fsync``s it before returning. A release that happened therefore always
has a complete, newline-terminated, durable line.

On open, every line is checked. A bad checksum, bad JSON, a bad field, or a gap in ``seq``
anywhere raises ``IntegrityError``: the node stops, and nothing is reset. The one tolerated
damage is a *torn tail* — a final fragment without its newline, left by a crash inside
``reserve``:

- if the fragment is a complete, valid record that lacks only its newline, it is counted
  (conservative: it may or may not have been released);
- otherwise it cannot describe a release that happened, because ``reserve`` had not
  returned, so it is not counted. Its bytes are kept in ``<ledger>.torn`` for audit.

Either way the file is repaired by a rewrite (temp file, fsync, atomic rename, fsync of the
directory), so the damage is handled once. A new ledger is created the same way, so it
never exists without its header. An exclusive ``flock`` on ``<ledger>.lock`` (a file that
is never renamed, so the lock survives repairs) keeps a second process from appending to
the same ledger.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2pfed.durable import atomic_write
from p2pfed.errors import BudgetExceededError, ConfigError, IntegrityError, LocalError
from p2pfed.privacy import validate
from p2pfed.privacy.accountants import (
    MECHANISM,
    Accountant,
    make_accountant,
    releases_within_budget,
)
from p2pfed.privacy.mechanisms import NoiseMode

LEDGER_FORMAT = 1
_HASH_HEX = 32  # 128 bits of SHA-256: corruption detection, not tamper-proofing (audit log)


@dataclass(frozen=True, slots=True)
class Release:
    """One release of a noised update: what the accountant needs, and how it was made."""

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    mode: NoiseMode

    def __post_init__(self) -> None:
        # normalised to plain int/float so numpy scalars serialise like Python numbers
        checked = {
            "round": validate.count("round", self.round, minimum=0),
            "noise_multiplier": validate.noise_multiplier(self.noise_multiplier),
            "sample_rate": validate.sample_rate(self.sample_rate),
            "steps": validate.count("steps", self.steps),
            "clip_norm": validate.clip_norm(self.clip_norm),
            "mode": NoiseMode(self.mode),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A release as written: its sequence number and when it was reserved."""

    seq: int
    timestamp: float
    release: Release


def _encode(body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return hashlib.sha256(payload).hexdigest()[:_HASH_HEX].encode() + b" " + payload + b"\n"


def _decode(line: bytes, where: str) -> dict[str, Any]:
    """Check and parse one line (without its newline); raises IntegrityError."""
    digest, sep, payload = line.partition(b" ")
    if not sep or len(digest) != _HASH_HEX:
        raise IntegrityError(f"{where} is malformed (no checksum prefix)")
    if hashlib.sha256(payload).hexdigest()[:_HASH_HEX].encode() != digest:
        raise IntegrityError(f"{where} fails its checksum (corrupted)")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where} is not valid JSON despite a valid checksum") from exc
    if not isinstance(body, dict):
        raise IntegrityError(f"{where} is not a JSON object")
    return body


def _record_from(body: dict[str, Any], where: str) -> LedgerRecord:
    try:
        if body.get("type") != "release":
            raise IntegrityError(f"{where} has type {body.get('type')!r}, expected 'release'")
        release = Release(
            round=body["round"],
            noise_multiplier=body["noise_multiplier"],
            sample_rate=body["sample_rate"],
            steps=body["steps"],
            clip_norm=body["clip_norm"],
            mode=NoiseMode(body["mode"]),
        )
        seq, ts = body["seq"], body["timestamp"]
        if not isinstance(seq, int) or not isinstance(ts, int | float):
            raise IntegrityError(f"{where} has a bad seq or timestamp")
        return LedgerRecord(seq, float(ts), release)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise IntegrityError(f"{where} is not a valid release record: {exc}") from exc


def _record_body(record: LedgerRecord) -> dict[str, Any]:
    r = record.release
    return {
        "type": "release",
        "seq": record.seq,
        "timestamp": record.timestamp,
        **{k: v for k, v in asdict(r).items() if k != "mode"},
        "mode": str(r.mode),
    }


class PrivacyLedger:
    """A node's persistent privacy budget: every release recorded before it happens.

    Raises ``IntegrityError`` on open if the file is corrupted (never resets it),
    ``LocalError`` if another process holds it, ``ConfigError`` for a bad budget or δ.
    ``read_only=True`` (for reports beside a running node) takes no lock, creates and
    repairs nothing, and refuses ``reserve``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        budget_epsilon: float,
        delta: float,
        accountant_kind: str = "pld",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.budget_epsilon = validate.epsilon(budget_epsilon)
        self.delta = validate.delta(delta)
        self.accountant_kind = accountant_kind
        self._accountant: Accountant = make_accountant(accountant_kind)
        self._clock = clock
        self._records: list[LedgerRecord] = []
        self.torn_tail: bytes | None = None  # what a crash left, if it was set aside
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.read_only = read_only
        if read_only:
            self._open_read_only()
        else:
            self._open()

    # --- opening ------------------------------------------------------------------------

    def _open(self) -> None:
        lock_fd = os.open(
            self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise LocalError(f"privacy ledger {self.path} is in use by another process") from exc
        self._lock_fd = lock_fd
        try:
            if not self.path.exists():
                header = {"type": "header", "format": LEDGER_FORMAT, "mechanism": MECHANISM}
                atomic_write(self.path, _encode(header))
            with open(self.path, "rb") as f:
                self._load(f.read())
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            self.close()
            raise

    def _open_read_only(self) -> None:
        """For reports while the node runs: no lock, no creation, no repair, no reserve."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise LocalError(f"privacy ledger {self.path} does not exist") from exc
        except OSError as exc:
            raise LocalError(f"cannot read privacy ledger {self.path}: {exc.strerror}") from exc
        self._load(data, repair=False)

    def _load(self, data: bytes, repair: bool = True) -> None:
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if not lines:
            raise IntegrityError(f"privacy ledger {self.path} has no complete header line")
        header = _decode(lines[0], f"privacy ledger {self.path} line 1")
        if header.get("type") != "header" or header.get("format") != LEDGER_FORMAT:
            raise IntegrityError(f"privacy ledger {self.path} has an unknown header {header!r}")
        if header.get("mechanism") != MECHANISM:
            raise IntegrityError(
                f"privacy ledger {self.path} is for mechanism {header.get('mechanism')!r}, "
                f"not {MECHANISM!r}"
            )
        records = [
            _record_from(_decode(line, f"{self.path} line {n}"), f"{self.path} line {n}")
            for n, line in enumerate(lines[1:], start=2)
        ]
        if tail:
            where = f"{self.path} last line (torn, no newline)"
            try:
                records.append(_record_from(_decode(tail, where), where))
                self.torn_tail = None  # complete record missing its newline: counted
            except IntegrityError:
                self.torn_tail = tail  # reserve never returned for it: nothing was released
        for expected, rec in enumerate(records, start=1):
            if rec.seq != expected:
                raise IntegrityError(
                    f"privacy ledger {self.path} has release seq {rec.seq} where {expected} "
                    "was expected (a record is missing or out of order)"
                )
        for rec in records:
            self._accountant.step(
                noise_multiplier=rec.release.noise_multiplier,
                sample_rate=rec.release.sample_rate,
                steps=rec.release.steps,
            )
        self._records = records
        if tail and repair:
            self._repair(lines[0], records, tail)

    def _repair(self, header_line: bytes, records: list[LedgerRecord], tail: bytes) -> None:
        if self.torn_tail is not None:
            with open(self.path.with_name(self.path.name + ".torn"), "ab") as aside:
                aside.write(tail + b"\n")
                aside.flush()
                os.fsync(aside.fileno())
        content = header_line + b"\n" + b"".join(_encode(_record_body(r)) for r in records)
        atomic_write(self.path, content)

    # --- queries ------------------------------------------------------------------------

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        """Every release recorded, oldest first."""
        return tuple(self._records)

    def spent_epsilon(self) -> float:
        """ε spent so far at the ledger's δ, by its accountant."""
        return self._accountant.get_epsilon(self.delta)

    def remaining_epsilon(self) -> float:
        """Budget left (0 when spent or overspent)."""
        return max(0.0, self.budget_epsilon - self.spent_epsilon())

    def epsilon_after(self, release: Release) -> float:
        """ε that would be spent if ``release`` were added; records nothing."""
        acc = self._accountant.copy()
        acc.step(
            noise_multiplier=release.noise_multiplier,
            sample_rate=release.sample_rate,
            steps=release.steps,
        )
        return acc.get_epsilon(self.delta)

    def rounds_left(self, noise_multiplier: float, sample_rate: float, steps: int) -> int:
        """How many more releases at these settings fit in the budget."""
        return releases_within_budget(
            self._accountant, self.budget_epsilon, self.delta, noise_multiplier, sample_rate, steps
        )

    def accountant(self) -> Accountant:
        """A copy of the ledger's accountant over every recorded release."""
        return self._accountant.copy()

    # --- the one write ------------------------------------------------------------------

    def reserve(self, release: Release) -> LedgerRecord:
        """Record ``release`` durably if it fits the budget; call before releasing.

        Raises ``BudgetExceededError`` (nothing written) when ε after it would exceed the
        budget, ``LocalError`` when the ledger is closed.
        """
        fd = self._writable_fd()
        candidate = self._accountant.copy()
        candidate.step(
            noise_multiplier=release.noise_multiplier,
            sample_rate=release.sample_rate,
            steps=release.steps,
        )
        after = candidate.get_epsilon(self.delta)
        if not after <= self.budget_epsilon:  # also refuses a NaN ε
            raise BudgetExceededError(
                f"release for round {release.round} (σ={release.noise_multiplier:g}, "
                f"q={release.sample_rate:g}, {release.steps} step(s)) would raise ε from "
                f"{self.spent_epsilon():.4g} to {after:.4g} at δ={self.delta:g}, over the "
                f"budget of {self.budget_epsilon:g} ({self.accountant_kind} accountant); "
                "refused, nothing was released"
            )
        timestamp = float(self._clock())
        if not math.isfinite(timestamp):
            raise ConfigError(f"the ledger clock returned {timestamp!r}")
        record = LedgerRecord(len(self._records) + 1, timestamp, release)
        line = _encode(_record_body(record))
        written = os.write(fd, line)
        if written != len(line):  # regular files do not short-write short lines; be sure
            raise IntegrityError(
                f"privacy ledger {self.path}: short write ({written} of {len(line)} bytes)"
            )
        os.fsync(fd)
        self._records.append(record)
        self._accountant = candidate  # already holds this history's composition, cached
        return record

    def _writable_fd(self) -> int:
        if self.read_only:
            raise LocalError(f"privacy ledger {self.path} was opened read-only")
        if self._fd is None:
            raise LocalError(f"privacy ledger {self.path} is closed")
        return self._fd

    def close(self) -> None:
        """Close the file and release the lock; further ``reserve`` calls fail."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

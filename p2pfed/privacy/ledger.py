r"""The per-node privacy ledger: a durable, checksummed, hash-chained record of every release.

Theory of operation. The ledger is an append-only file of JSON lines, each
``<sha256-hex-prefix> <json>\n``, where the hex prefix (128 bits) is the SHA-256 of the
JSON bytes. The first line is a header (format, mechanism); each further line is one
release (seq, round, σ, q, steps, S, mode, timestamp) with consecutive ``seq``, or a
``repair`` note. The spend is always *recomputed* from the releases by an accountant, never
stored, so there is no counter to drift from the records.

Chain and head. Every line after the header carries ``prev``, the chain hash so far; the
chain starts at SHA-256(domain ‖ header JSON) and each line moves it to SHA-256(previous
chain ‖ that line's JSON). The *head* — (releases, chain hash after the last release,
ε) — is written by the daemon into each checkpoint and into the signed audit log's ``dp``
entry (*anchors*). Opening with ``anchors`` refuses, in one sentence naming the source that
disagrees, a ledger that holds fewer releases than an anchor (cut, rolled back, replaced
by an older copy) or whose chain at the anchored release differs (rewritten). A chain break
inside the file (a line whose ``prev`` is not the chain so far) is refused always.

``reserve(release)`` is called after clipping and *before* the noised update leaves the
node: it computes ε with the release added, refuses with ``BudgetExceededError`` if that
exceeds the budget, and otherwise writes the line with one ``write`` on an ``O_APPEND``
descriptor and ``fsync``s it (through ``p2pfed.durable.fsync``, so tests can observe it)
before returning. A release that happened therefore always has a complete, durable line. A
failed write or fsync refuses the release and closes the ledger: what reached the disk is
unknown, so the node must restart and re-read it (a line that did land is then counted).

On open, every line is checked. A bad checksum, bad JSON, a bad field, a gap in ``seq`` or
a chain break raises ``IntegrityError``: the node stops, and nothing is reset. The one
tolerated damage is a *torn tail* — a final fragment without its newline, left by a crash
inside ``reserve``:

- if the fragment is a complete, valid record that lacks only its newline, it is counted
  (conservative: it may or may not have been released);
- otherwise it cannot describe a release that happened, because ``reserve`` had not
  returned, so it is not counted. Its bytes are kept in ``<ledger>.torn`` for audit. With
  anchors this is allowed only for the single record after the last anchored head.

Either way the file is repaired by a rewrite (temp file, fsync, atomic rename, fsync of the
directory) that ends in a chained ``repair`` note, so the damage is handled once and
recorded. A new ledger is created the same way, so it never exists without its header. An
exclusive ``flock`` on ``<ledger>.lock`` (a file that is never renamed, so the lock survives
repairs) keeps a second process from appending to the same ledger.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfed import durable
from p2pfed.durable import atomic_write
from p2pfed.errors import BudgetExceededError, ConfigError, IntegrityError, LocalError
from p2pfed.privacy import validate
from p2pfed.privacy.accountants import MECHANISM, Accountant, make_accountant
from p2pfed.privacy.calibrate import releases_within_budget
from p2pfed.privacy.ledger_format import (
    LEDGER_FORMAT,
    RECOVER_HINT,
    Anchor,
    LedgerHead,
    LedgerRecord,
    Release,
    chain_next,
    chain_start,
    decode_line,
    encode_line,
    header_line,
    record_body,
    record_from,
    refuse_missing,
)

__all__ = ["Anchor", "LedgerHead", "LedgerRecord", "PrivacyLedger", "Release"]


def lock_ledger(path: Path, in_use: str) -> int:
    """Take the exclusive ``<ledger>.lock`` flock; its descriptor, or ``LocalError(in_use)``.

    Closing the descriptor releases the lock.
    """
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise LocalError(in_use) from None
    return lock_fd


class PrivacyLedger:
    """A node's persistent privacy budget: every release recorded before it happens.

    Raises ``IntegrityError`` on open if the file is corrupted, its chain is broken, or it
    is behind or unlike one of ``anchors`` (never resets it); ``LocalError`` if another
    process holds it; ``ConfigError`` for a bad budget or δ. ``anchors=None`` (library use,
    no anchors known) skips the cross-check. ``read_only=True`` (for reports beside a
    running node) takes no lock, creates and repairs nothing, and refuses ``reserve``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        budget_epsilon: float,
        delta: float,
        accountant_kind: str = "pld",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        anchors: Sequence[Anchor] | None = None,
    ) -> None:
        self.path = Path(path)
        self.budget_epsilon = validate.epsilon(budget_epsilon)
        self.delta = validate.delta(delta)
        self.accountant_kind = accountant_kind
        self._accountant: Accountant = make_accountant(accountant_kind)
        self._clock = clock
        self._records: list[LedgerRecord] = []
        self._chains: list[str] = []  # chain hash after each release (index seq - 1)
        self._chain = ""  # chain hash after the last line: the next line's ``prev``
        self._chain0 = ""  # chain hash over the header alone
        self._recovered_through = 0  # releases a recovery restored (chains not comparable)
        self.torn_tail: bytes | None = None  # what a crash left, if it was set aside
        self.anchors = tuple(anchors) if anchors is not None else None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.read_only = read_only
        if read_only:
            self._open_read_only()
        else:
            self._open()

    # --- opening ------------------------------------------------------------------------

    def _open(self) -> None:
        self._lock_fd = lock_ledger(
            self.path, f"privacy ledger {self.path} is in use by another process"
        )
        try:
            if not self.path.exists():
                self._refuse_missing()
                atomic_write(self.path, header_line())
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
            self._refuse_missing()
            raise LocalError(f"privacy ledger {self.path} does not exist") from exc
        except OSError as exc:
            raise LocalError(f"cannot read privacy ledger {self.path}: {exc.strerror}") from exc
        self._load(data, repair=False)

    def _refuse_missing(self) -> None:
        """A missing ledger is new only if no anchor records a release."""
        refuse_missing(self.path, self.anchors or ())

    def _load(self, data: bytes, repair: bool = True) -> None:
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if not lines:
            raise IntegrityError(f"privacy ledger {self.path} has no complete header line")
        header = decode_line(lines[0], f"privacy ledger {self.path} line 1")
        if header.get("type") == "header" and header.get("format") == 1:
            raise IntegrityError(
                f"privacy ledger {self.path} is in format 1 (no hash chain) and this version "
                f"reads format {LEDGER_FORMAT}; to convert it, {RECOVER_HINT}"
            )
        if header.get("type") != "header" or header.get("format") != LEDGER_FORMAT:
            raise IntegrityError(f"privacy ledger {self.path} has an unknown header {header!r}")
        if header.get("mechanism") != MECHANISM:
            raise IntegrityError(
                f"privacy ledger {self.path} is for mechanism {header.get('mechanism')!r}, "
                f"not {MECHANISM!r}"
            )
        recovered = header.get("recovered_through", 0)
        self._recovered_through = recovered if isinstance(recovered, int) else 0
        chain = self._chain0 = chain_start(lines[0])
        for n, line in enumerate(lines[1:], start=2):
            chain = self._take(line, f"{self.path} line {n}", chain)
        self.torn_tail = None
        if tail:
            where = f"{self.path} last line (torn, no newline)"
            try:
                body = decode_line(tail, where)
            except IntegrityError:
                self.torn_tail = tail  # reserve never returned for it: nothing was released
            else:  # a complete record missing only its newline: counted
                chain = self._take(tail, where, chain, body)
        self._chain = chain
        self._check_anchors()
        if tail and repair:
            self._repair(lines[0], lines[1:], tail)

    def _take(self, line: bytes, where: str, chain: str, body: dict[str, Any] | None = None) -> str:
        """Check one line against the chain so far and count it; returns the new chain."""
        body = decode_line(line, where) if body is None else body
        if body.get("prev") != chain:
            raise IntegrityError(
                f"privacy ledger {where} breaks the hash chain (a record before it was edited, "
                f"removed or inserted); restore the ledger from a backup or {RECOVER_HINT}"
            )
        chain = chain_next(chain, line)
        if body.get("type") == "repair":
            return chain
        rec = record_from(body, where)
        expected = len(self._records) + 1
        if rec.seq != expected:
            raise IntegrityError(
                f"privacy ledger {self.path} has release seq {rec.seq} where {expected} "
                "was expected (a record is missing or out of order)"
            )
        self._accountant.step(
            noise_multiplier=rec.release.noise_multiplier,
            sample_rate=rec.release.sample_rate,
            steps=rec.release.steps,
        )
        self._records.append(rec)
        self._chains.append(chain)
        return chain

    def _check_anchors(self) -> None:
        if self.anchors is None:
            return
        held, spent = len(self._records), self.spent_epsilon()
        for a in self.anchors:
            h = a.head
            if h.seq > held:
                raise IntegrityError(
                    f"privacy ledger {self.path} holds {held} release(s) (ε {spent:.4g}) but "
                    f"{a.source} records {h.seq} (ε {h.epsilon:.4g}): it was cut, rolled back "
                    f"or replaced; restore the newest copy or {RECOVER_HINT}"
                )
            if h.seq <= self._recovered_through:
                if h.epsilon > spent * (1 + 1e-9) + 1e-12:
                    raise IntegrityError(
                        f"privacy ledger {self.path} (recovered) spends ε {spent:.4g} but "
                        f"{a.source} records ε {h.epsilon:.4g}; {RECOVER_HINT}"
                    )
            elif h.seq > 0 and self._chains[h.seq - 1] != h.chain:
                raise IntegrityError(
                    f"privacy ledger {self.path} differs at release {h.seq} from what "
                    f"{a.source} records (another history was written over it); restore the "
                    f"newest copy or {RECOVER_HINT}"
                )
        if self.torn_tail is not None:
            last = max((a.head.seq for a in self.anchors), default=0)
            if held != last:
                raise IntegrityError(
                    f"privacy ledger {self.path} ends in a torn record after release {held}, "
                    f"but the last anchored release is {last}: only the single record after "
                    f"the last anchored head is repaired automatically; {RECOVER_HINT}"
                )

    def _repair(self, header: bytes, lines: list[bytes], tail: bytes) -> None:
        if self.torn_tail is not None:
            with open(self.path.with_name(self.path.name + ".torn"), "ab") as aside:
                aside.write(tail + b"\n")
                aside.flush()
                durable.fsync(aside.fileno())
            kept = lines
        else:
            kept = [*lines, tail]
        note = encode_line(
            {
                "type": "repair",
                "prev": self._chain,
                "timestamp": float(self._clock()),
                "after_seq": len(self._records),
                "torn_bytes": len(tail) if self.torn_tail is not None else 0,
                "torn_sha256": hashlib.sha256(tail).hexdigest(),
                "action": "set-aside" if self.torn_tail is not None else "newline-restored",
            }
        )
        atomic_write(self.path, b"".join(x + b"\n" for x in [header, *kept]) + note)
        self._chain = chain_next(self._chain, note)

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

    def rounds_left(self, noise_multiplier: float, sample_rate: float, steps: int) -> int:
        """How many more releases at these settings fit in the budget."""
        return releases_within_budget(
            self._accountant, self.budget_epsilon, self.delta, noise_multiplier, sample_rate, steps
        )

    def head(self) -> LedgerHead:
        """Releases recorded, chain hash after the last, and ε: what anchors record."""
        chain = self._chains[-1] if self._chains else self._chain0
        return LedgerHead(len(self._records), chain, self.spent_epsilon())

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
        # The time of the request, not of the accounting after it (which can take a while):
        # a caller that checked a deadline just before must find the record before it too.
        timestamp = float(self._clock())
        if not math.isfinite(timestamp):
            raise ConfigError(f"the ledger clock returned {timestamp!r}")
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
        record = LedgerRecord(len(self._records) + 1, timestamp, release)
        line = encode_line(record_body(record, self._chain))
        try:
            written = os.write(fd, line)
            if written != len(line):  # regular files do not short-write short lines
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            durable.fsync(fd)
        except OSError as exc:
            # What reached the disk is unknown: refuse this release and stop appending; a
            # restart re-reads the file and counts the line if it landed.
            self.close()
            raise LocalError(
                f"privacy ledger {self.path}: the record for round {release.round} could not "
                f"be made durable ({exc}); the release was refused and the ledger closed, "
                "restart the node"
            ) from exc
        self._chain = chain_next(self._chain, line)
        self._records.append(record)
        self._chains.append(self._chain)
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

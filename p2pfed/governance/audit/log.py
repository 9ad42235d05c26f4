"""Writing the node's audit log: sign, chain and durably append one entry at a time.

Theory of operation: ``AuditLog`` holds the file open for appending under an exclusive
``flock`` (a second process cannot append to the same log). Opening an existing log
re-checks its whole chain and the last entry's signature (``verify_entries``) and refuses
to continue a broken log or one another node signed (``IntegrityError``). Each ``append``
builds the entry, signs it, writes it as one canonical-JSON line, flushes and fsyncs it
before returning, and moves the head on. The typed helpers (``daemon_start``, ``cohort``,
``dp`` …) are the only way the daemon builds bodies, so every log carries the same fields
under the same names; peer IDs in them are salted hashes (``salt``).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from p2pfed.canonical import canonical_json
from p2pfed.durable import fsync_dir
from p2pfed.errors import ConfigError, IntegrityError, LocalError, ReasonCode
from p2pfed.governance.audit.entries import (
    FORMAT_VERSION,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    EntryKind,
    entry_hash,
    finite,
    is_hex,
    signing_message,
)
from p2pfed.governance.audit.salt import MIN_SALT_BYTES, hash_peer_id
from p2pfed.governance.audit.verify import verify_entries
from p2pfed.identity import peer_id_from_public_key
from p2pfed.identity.keys import Signer

Clock = Callable[[], float]


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
        stages_s: Iterable[tuple[str, float]] = (),
    ) -> dict[str, Any]:
        """A round finished (``outcome``: completed, failed, aborted; ``reason`` if not).

        ``stages_s``: seconds per stage, in order (train, aggregate, commit, evaluate).
        """
        body: dict[str, Any] = {
            "round": round_number,
            "outcome": outcome,
            "duration_s": finite(duration_s, "round duration"),
            "participants": participants,
        }
        if reason is not None:
            body["reason"] = reason
        # Pairs, not a mapping: canonical JSON sorts keys, and the order is the round's.
        stages = [[name, finite(round(s, 4), f"{name} duration")] for name, s in stages_s]
        if stages:
            body["stages_s"] = stages
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
        if not is_hex(model_hash, 32) or (parent_hash is not None and not is_hex(parent_hash, 32)):
            raise LocalError("model hashes must be 64 hex digits (SHA-256)")
        body: dict[str, Any] = {
            "round": round_number,
            "model_hash": model_hash,
            "parent_hash": parent_hash,
        }
        if certificate is not None:
            body["certificate"] = dict(certificate)
        return self.append(EntryKind.MODEL_VERSION, body)

    def model_certified(
        self,
        round_number: int,
        *,
        model_hash: str,
        stored: bool,
        certificate: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A model held got its commit certificate after its round's ``model_version``.

        ``stored``: whether the registry holds that model (one caught up by model sync may
        not be); ``certificate``: its summary (``CommitCertificate.summary``).
        """
        if not is_hex(model_hash, 32):
            raise LocalError("model hashes must be 64 hex digits (SHA-256)")
        body = {
            "round": round_number,
            "model_hash": model_hash,
            "stored": stored,
            "certificate": dict(certificate),
        }
        return self.append(EntryKind.MODEL_CERTIFIED, body)

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
            "noise_multiplier": finite(noise_multiplier, "noise multiplier"),
            "clip_norm": finite(clip_norm, "clip norm"),
            "sample_rate": finite(sample_rate, "sample rate"),
            "steps": steps,
            "delta": finite(delta, "delta"),
            "epsilon": finite(epsilon, "epsilon"),
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

    def unreachable(
        self, peer_id: str, reason: str, round_number: int | None = None
    ) -> dict[str, Any]:
        """This node cannot reach ``peer_id`` directly nor by relay: the pair and the reason.

        The pair is the signer and the (hashed) peer; the caller keeps raw peer IDs out of
        ``reason``. ``round_number``: the round this node was at, when it had one.
        """
        body: dict[str, Any] = {"peer": self.hash_peer(peer_id), "reason": reason}
        if round_number is not None:
            body["round"] = round_number
        return self.append(EntryKind.UNREACHABLE, body)

    def link(
        self, peer_id: str, via: str, rtt_s: float | None, throughput_mbps: float | None
    ) -> dict[str, Any]:
        """How this node reaches ``peer_id`` now (direct, hole-punched, relayed), as measured.

        ``rtt_s`` and ``throughput_mbps`` are None while not measured.
        """
        body = {
            "peer": self.hash_peer(peer_id),
            "via": via,
            "rtt_s": None if rtt_s is None else finite(rtt_s, "a round trip"),
            "throughput_mbps": (
                None if throughput_mbps is None else finite(throughput_mbps, "a throughput")
            ),
        }
        return self.append(EntryKind.LINK, body)

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

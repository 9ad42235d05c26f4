"""``p2pfed privacy recover``: rebuild a refused ledger without ever lowering the spend.

Theory of operation: the sources of truth about what a node released are its ledger (what
can still be read of it, in any format), the signed audit log's ``dp`` entries (one a
committed round, with σ, q, steps, ε and, since anchoring, the ledger head) and the
checkpoint's head. ``recover`` keeps every release the old ledger still holds, adds one
release per audited round after them (with copies where a head shows more releases than
rounds: reservations of rounds that then failed), pads with copies of the last release
until ε reaches the highest ε any source recorded, and writes a new chained ledger whose
header says how many releases were restored (anchors up to there are then checked by ε,
not by chain). The old file is kept beside it. It takes the ledger's lock, so it cannot
run beside a node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.governance.ledger_anchors import audit_dp_entries, checkpoint_state
from p2pfed.privacy.accountants import make_accountant
from p2pfed.privacy.ledger import lock_ledger
from p2pfed.privacy.ledger_format import (
    LedgerHead,
    LedgerRecord,
    Release,
    decode_line,
    encode_records,
    header_line,
    record_from,
)
from p2pfed.privacy.mechanisms import NoiseMode

_MAX_PADDING = 100_000


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``recover`` wrote and why."""

    releases: int
    epsilon: float
    floor: float
    """The highest ε any source recorded; ``epsilon`` is never below it."""
    salvaged: int
    """Releases kept from the old ledger."""
    from_audit: int
    """Releases added from audit ``dp`` entries (and heads)."""
    padded: int
    """Copies added so that ε reaches ``floor``."""
    kept_aside: Path | None


def salvage(path: Path) -> list[Release]:
    """The releases a ledger file still holds, in any format, up to its first bad line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    releases: list[Release] = []
    for n, line in enumerate(data.split(b"\n")[1:], start=2):
        try:
            body = decode_line(line, f"{path} line {n}")
            if body.get("type") == "repair":
                continue
            rec = record_from(body, f"{path} line {n}")
        except IntegrityError:
            break
        if rec.seq != len(releases) + 1:
            break
        releases.append(rec.release)
    return releases


def _epsilon(releases: list[Release], delta: float, kind: str) -> float:
    acc = make_accountant(kind)
    for r in releases:
        acc.step(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate, steps=r.steps)
    return acc.get_epsilon(delta)


def _release_of(body: dict[str, Any], mode: NoiseMode) -> Release:
    try:
        return Release(
            round=body["round"],
            noise_multiplier=body["noise_multiplier"],
            sample_rate=body["sample_rate"],
            steps=body.get("steps", 1),
            clip_norm=body["clip_norm"],
            mode=mode,
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise IntegrityError(
            f"audit dp entry for round {body.get('round')} is unusable: {exc}"
        ) from None


def recover(
    ledger: Path,
    audit: Path,
    checkpoint: Path,
    *,
    delta: float,
    accountant: str,
    mode: NoiseMode,
    clock: Callable[[], float] = time.time,
) -> Recovery:
    """Rebuild ``ledger`` from what it still holds, the audit log and the checkpoint."""
    lock_fd = lock_ledger(ledger, f"privacy ledger {ledger} is in use; stop the node first")
    try:
        return _recover(ledger, audit, checkpoint, delta, accountant, mode, clock)
    finally:
        os.close(lock_fd)


def _recover(
    ledger: Path,
    audit: Path,
    checkpoint: Path,
    delta: float,
    accountant: str,
    mode: NoiseMode,
    clock: Callable[[], float],
) -> Recovery:
    releases = salvage(ledger)
    salvaged = len(releases)
    floor = _epsilon(releases, delta, accountant) if releases else 0.0
    last_round = releases[-1].round if releases else -1
    min_seq = 0
    for body in audit_dp_entries(audit):
        if body.get("accountant") == "off":
            continue
        floor = max(floor, float(body.get("epsilon", 0.0)))
        head = body.get("ledger_head")
        seq = LedgerHead.from_dict(head, f"audit log {audit}").seq if head is not None else 0
        min_seq = max(min_seq, seq)
        if body["round"] <= last_round:
            continue
        release = _release_of(body, mode)
        # A head ahead of the rounds counts reservations of failed rounds: as many copies.
        while len(releases) < seq - 1:
            releases.append(release)
        releases.append(release)
        last_round = release.round
    from_audit = len(releases) - salvaged
    state = checkpoint_state(checkpoint)
    if state is not None and "ledger_head" in state["extra"]:
        head = LedgerHead.from_dict(state["extra"]["ledger_head"], f"checkpoint {checkpoint}")
        floor, min_seq = max(floor, head.epsilon), max(min_seq, head.seq)
    if floor > 0 and not releases:
        raise IntegrityError(
            f"the audit log {audit} and checkpoint record ε {floor:.4g} but no release "
            "parameters survive to rebuild from; restore the ledger from a backup"
        )
    padded = 0
    while releases and (
        len(releases) < min_seq or _epsilon(releases, delta, accountant) < floor * (1 - 1e-9)
    ):
        if padded >= _MAX_PADDING:
            raise IntegrityError(f"cannot rebuild ε {floor:.4g} from the recorded releases")
        releases.append(releases[-1])
        padded += 1
    epsilon = _epsilon(releases, delta, accountant) if releases else 0.0
    stamp = float(clock())
    records = [LedgerRecord(i, stamp, r) for i, r in enumerate(releases, start=1)]
    header = header_line(
        recovered_through=len(records), recovered_at=stamp, recovered_floor_epsilon=floor
    )
    aside = None
    if ledger.exists():
        aside = ledger.with_name(f"{ledger.name}.before-recover.{int(stamp)}")
        os.replace(ledger, aside)
    atomic_write(ledger, encode_records(header, records))
    return Recovery(len(records), epsilon, floor, salvaged, from_audit, padded, aside)

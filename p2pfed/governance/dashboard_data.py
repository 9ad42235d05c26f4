"""What the dashboard shows, gathered from the files a daemon already writes.

Theory of operation: ``collect(state_dir)`` reads the node's ``status.json`` (members, ε
budget, state), its audit log (verified with ``verify_log``; round, DP and drift entries
parsed from it), and its model registry's manifests, and returns one ``DashboardData``.
Nothing here reads the node's data files: the page can only show what these records hold,
which are counts, ε, durations, hashes and validation metrics — never rows or per-patient
values. ε spent per round replays the privacy ledger's releases on its accountant (a round
that failed after its noised update was released spent ε too, and has no audit ``dp``
entry); without a ledger the audit log's ``dp`` entries are shown. The planned ε curve is
the accountant's answer for the DP parameters recorded, one point per configured round.
Both are cached, since the page refreshes itself often.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfed.errors import IntegrityError, P2PFedError
from p2pfed.governance.audit import verify_log
from p2pfed.governance.models import MODELS_DIR, ModelRegistry
from p2pfed.governance.status_file import read_status
from p2pfed.privacy.accountants import make_accountant
from p2pfed.privacy.calibrate import epsilon_for
from p2pfed.privacy.ledger_format import decode_line, record_from

AUDIT_FILE = "audit.jsonl"  # p2pfed.daemon.prepare.AUDIT_FILE (the daemon is a layer above)


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One other roster member as this node sees it."""

    name: str
    connected: bool
    addresses: tuple[str, ...]
    last_round: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One round from the audit log: how long, how many contributed, how it ended."""

    round: int
    outcome: str
    duration_s: float
    contributors: int
    reason: str | None = None
    stages_s: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One stored model version: its hash, its parent's, and its validation metrics."""

    version: str
    parent: str | None
    round: int
    contributors: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """Whether the audit chain verifies; if not, the first bad entry."""

    verified: bool
    entries: int
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class DashboardData:
    """Everything one node's page shows."""

    name: str
    state: str
    updated: float | None
    planned_rounds: int
    members: tuple[MemberRow, ...] = ()
    rounds: tuple[RoundRow, ...] = ()
    epsilon: tuple[tuple[int, float], ...] = ()
    """(round, ε spent after it): the privacy ledger replayed, else the audit log's."""
    epsilon_budget: float | None = None
    planned: tuple[tuple[int, float], ...] = ()
    models: tuple[ModelRow, ...] = ()
    audit: AuditStatus = field(default_factory=lambda: AuditStatus(False, 0, "no audit log"))
    drift: tuple[tuple[int, str], ...] = ()
    """(round, the alert's message)."""


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _members(status: dict[str, Any]) -> tuple[MemberRow, ...]:
    rows = status.get("members")
    if not isinstance(rows, dict):
        return ()
    out = []
    for name, row in sorted(rows.items()):
        if not isinstance(row, dict):
            continue
        last = row.get("last_round")
        out.append(
            MemberRow(
                name=str(name),
                connected=row.get("connected") is True,
                addresses=tuple(str(a) for a in row.get("addresses") or ()),
                last_round=last if isinstance(last, int) else None,
                last_error=None if row.get("last_error") is None else str(row["last_error"]),
            )
        )
    return tuple(out)


def _entries(path: Path) -> list[dict[str, Any]]:
    """The audit log's parsable entries (the chain status is ``verify_log``'s to report)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("body"), dict):
            out.append(entry)
    return out


@functools.lru_cache(maxsize=64)
def planned_curve(
    sigma: float, delta: float, sample_rate: float, steps: int, rounds: int, accountant: str
) -> tuple[tuple[int, float], ...]:
    """ε after each of ``rounds`` rounds of ``steps`` steps at (σ, q), by the accountant."""
    if sigma <= 0 or rounds < 1:
        return ()
    return tuple(
        (k, epsilon_for(sigma, delta, sample_rate, steps * (k + 1), accountant))
        for k in range(rounds)
    )


@functools.lru_cache(maxsize=64)
def spent_curve(
    releases: tuple[tuple[int, float, float, int], ...], accountant: str, delta: float
) -> tuple[tuple[int, float], ...]:
    """(round, ε after it) for ledger releases (round, σ, q, steps), composed in order."""
    acc = make_accountant(accountant)
    out = []
    for r, sigma, q, steps in releases:
        acc.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
        out.append((r, acc.get_epsilon(delta)))
    return tuple(out)


def _from_ledger(status: dict[str, Any]) -> dict[str, Any]:
    """ε per released round by replaying the ledger, or nothing (then the audit log's)."""
    path, kind = status.get("privacy_ledger"), status.get("accountant")
    delta = _number(status.get("delta"))
    if not (isinstance(path, str) and isinstance(kind, str) and delta):
        return {}
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError:
        return {}
    releases = []
    for n, line in enumerate(lines[1:], start=2):  # line 1 is the header
        try:
            rel = record_from(decode_line(line, f"ledger line {n}"), f"ledger line {n}").release
        except IntegrityError:
            continue  # a torn last line: the daemon's own recovery decides about it
        releases.append((rel.round, rel.noise_multiplier, rel.sample_rate, rel.steps))
    try:
        return {"epsilon": spent_curve(tuple(releases), kind, delta)}
    except P2PFedError:
        return {}


def _from_audit(path: Path, rounds: int) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {}
    # Verifying every signature on each refresh would grow with the log: only when it changed.
    return _audit_cached(path, st.st_size, st.st_ctime_ns, rounds)  # ctime: cannot be set back


def _stages(value: Any) -> tuple[tuple[str, float], ...]:
    """A round's ``stages_s`` ([name, seconds] pairs) as written; malformed pairs left out."""
    if not isinstance(value, list):
        return ()
    pairs = [p for p in value if isinstance(p, list) and len(p) == 2]
    seconds = [(str(name), _number(s)) for name, s in pairs]
    return tuple((name, s) for name, s in seconds if s is not None)


@functools.lru_cache(maxsize=16)
def _audit_cached(path: Path, _size: int, _ctime_ns: int, rounds: int) -> dict[str, Any]:
    report = verify_log(path)
    problem = None if report.problem is None else report.summary()
    out: dict[str, Any] = {"audit": AuditStatus(report.ok, report.entries, problem)}
    ends, eps, drift, dp = [], {}, [], None
    for e in _entries(path):
        body, kind = e["body"], e.get("kind")
        r = body.get("round")
        if not isinstance(r, int):
            continue
        if kind == "round_end":
            ends.append(
                RoundRow(
                    r,
                    str(body.get("outcome")),
                    _number(body.get("duration_s")) or 0.0,
                    int(body.get("participants") or 0),
                    None if body.get("reason") is None else str(body["reason"]),
                    _stages(body.get("stages_s")),
                )
            )
        elif kind == "dp" and _number(body.get("epsilon")) is not None:
            eps[r] = float(body["epsilon"])
            dp = dp or body
        elif kind == "drift_alert":
            drift.append((r, str(body.get("message", body.get("kind", "")))))
    out |= {"rounds": tuple(ends), "epsilon": tuple(sorted(eps.items())), "drift": tuple(drift)}
    if dp is not None:
        # A log without a plannable mechanism shows the spent curve alone.
        with contextlib.suppress(KeyError, TypeError, ValueError, P2PFedError):
            out["planned"] = planned_curve(
                float(dp["noise_multiplier"]),
                float(dp["delta"]),
                float(dp["sample_rate"]),
                int(dp.get("steps") or 1),
                rounds,
                str(dp["accountant"]),
            )
    return out


def _models(state_dir: Path) -> tuple[ModelRow, ...]:
    try:
        versions = ModelRegistry(state_dir / MODELS_DIR).versions()
    except P2PFedError:
        return ()
    return tuple(
        ModelRow(
            m.model_hash[:16],
            None if m.parent_hash is None else m.parent_hash[:16],
            m.round,
            len(m.participants),
            {k: float(v) for k, v in m.metrics.items() if _number(v) is not None},
        )
        for m in versions
    )


def collect(state_dir: Path) -> DashboardData:
    """The dashboard's inputs from one node's state folder (missing parts are left empty)."""
    try:
        status = read_status(state_dir) or {}
    except P2PFedError:
        status = {}  # being replaced this instant: the next refresh reads it
    rounds = status.get("rounds")
    planned_rounds = rounds if isinstance(rounds, int) and rounds > 0 else 0
    updated = _number(status.get("updated"))
    return DashboardData(
        name=str(status.get("name", state_dir.parent.name)),
        state=str(status.get("state", "not started")),
        updated=updated,
        planned_rounds=planned_rounds,
        members=_members(status),
        epsilon_budget=_number(status.get("epsilon_budget")),
        models=_models(state_dir),
        **(_from_audit(state_dir / AUDIT_FILE, planned_rounds) | _from_ledger(status)),
    )

"""Where a node's privacy ledger is anchored: its checkpoint and its signed audit log.

Theory of operation: after each round the daemon writes the ledger's head (releases, chain
hash, ε) into ``checkpoint.pt`` and into the audit log's ``dp`` entry. A ledger that was
deleted, cut or replaced by an older copy cannot also rewrite those two (the audit log is
signed and chained), so at start ``collect`` reads them back and ``PrivacyLedger`` checks
itself against them. ``Evidence`` is what shows a spend without a head (a checkpoint or
``dp`` entry written before heads existed): it only makes a *missing* ledger refused.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfed.durable import unseal
from p2pfed.errors import IntegrityError
from p2pfed.governance.audit import EntryKind, ProblemKind, verify_log
from p2pfed.privacy.ledger_format import Anchor, LedgerHead, refuse_missing


@dataclass(frozen=True)
class Anchors:
    """The heads recorded outside the ledger, and sources that show a spend without one."""

    heads: tuple[Anchor, ...] = ()
    evidence: tuple[str, ...] = field(default_factory=tuple)

    def refuse_missing(self, ledger: Path) -> None:
        """``IntegrityError`` if ``ledger`` is absent although a spend is recorded."""
        refuse_missing(ledger, self.heads, self.evidence)


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """The round and extra fields of a checkpoint (None if there is none)."""
    try:
        payload = unseal(path.read_bytes(), f"checkpoint {path}")
    except FileNotFoundError:
        return None
    import torch  # only for a checkpoint: a first start listens before torch loads

    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # torch raises many types for a bad archive
        raise IntegrityError(f"checkpoint {path} cannot be read ({exc})") from None
    return {"round": int(state["round"]), "extra": dict(state.get("extra", {}))}


def audit_dp_entries(path: Path) -> list[dict[str, Any]]:
    """Bodies of the ``dp`` entries of a verified audit log (a torn last line is skipped)."""
    if not path.exists():
        return []
    report = verify_log(path)
    if report.problem is not None and report.problem.kind is not ProblemKind.TORN:
        raise IntegrityError(f"audit log {report.summary()}")
    lines = path.read_bytes().split(b"\n")
    whole = lines[:-1]  # the last piece is b"" or a torn line
    entries = [json.loads(line) for line in whole if line]
    return [e["body"] for e in entries if e.get("kind") == EntryKind.DP.value]


def collect(checkpoint: Path, audit: Path) -> Anchors:
    """The ledger heads recorded in ``checkpoint`` and ``audit`` (either may be absent)."""
    heads: list[Anchor] = []
    evidence: list[str] = []
    state = checkpoint_state(checkpoint)
    if state is not None:
        where = f"checkpoint {checkpoint} (round {state['round']})"
        raw = state["extra"].get("ledger_head")
        if raw is not None:
            heads.append(Anchor(LedgerHead.from_dict(raw, where), where))
        elif state["round"] >= 0:
            evidence.append(where)
    audit_head: Anchor | None = None
    for body in audit_dp_entries(audit):
        where = f"audit log {audit} (round {body.get('round')})"
        raw = body.get("ledger_head")
        if raw is not None:
            anchor = Anchor(LedgerHead.from_dict(raw, where), where)
            if audit_head is None or anchor.head.seq >= audit_head.head.seq:
                audit_head = anchor
        elif body.get("accountant") != "off":
            evidence.append(where)
    if audit_head is not None:
        heads.append(audit_head)
    return Anchors(tuple(heads), tuple(evidence))

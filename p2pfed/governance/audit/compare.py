"""Comparing members' audit logs: do they agree on every round's model hash.

Theory of operation: the chain alone cannot show that a log's *last* entries were cut off,
nor that one member recorded a model the others did not. ``compare_logs`` verifies each
log, then lines up their ``model_version`` entries round by round: two hashes for one
round is a disagreement; a round some logs lack is reported as missing. Model hashes are
not salted, so logs of different members compare directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.governance.audit.entries import EntryKind, is_hex
from p2pfed.governance.audit.verify import verify_log


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
            if not isinstance(rnd, int) or not is_hex(model, 32):
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

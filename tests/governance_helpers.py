"""Shared helpers for the governance tests: a PyNaCl signer, a fake clock, audit entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2pfed.identity import Identity

SALT = b"consortium-salt-for-tests-32byte"


def make_signer(seed: bytes) -> Identity:
    """The identity engineer's ``Identity`` is the audit log's signer."""
    return Identity.from_seed(seed)


class FakeClock:
    """Advances one second per reading."""

    def __init__(self, start: float = 1_764_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def model_hash_for(round_number: int, variant: str = "") -> str:
    import hashlib

    return hashlib.sha256(f"model-{round_number}{variant}".encode()).hexdigest()


STAGES = (("train", 0.5), ("aggregate", 1.5), ("commit", 0.25), ("evaluate", 0.25))
"""Seconds per stage of every round of the demo log (they add up to its 2.5 s)."""


def write_demo_log(path, signer, rounds=3, cohort=("peer-a", "peer-b", "peer-c"), variant=None):
    """A log as a daemon would write it; ``variant`` maps round → suffix for its model hash."""
    from p2pfed.errors import ReasonCode
    from p2pfed.governance.audit import AuditLog

    variant = variant or {}
    with AuditLog(path, signer, salt=SALT, clock=FakeClock()) as log:
        log.daemon_start(software_version="0.1.0", consortium="demo", roster_version=1)
        log.roster_version(1, roster_digest="ab" * 32)
        parent = None
        for r in range(1, rounds + 1):
            log.round_start(r, roster_version=1, mode="ring")
            log.cohort(r, cohort)
            if r == 2:
                log.exclusion(r, "peer-x", ReasonCode.BAD_SIGNATURE, "frame signature invalid")
            h = model_hash_for(r, variant.get(r, ""))
            log.model_version(r, model_hash=h, parent_hash=parent)
            parent = h
            log.dp(
                r,
                noise_multiplier=1.1,
                clip_norm=1.0,
                sample_rate=1.0,
                delta=1e-5,
                epsilon=0.5 * r,
                accountant="rdp",
            )
            log.round_end(
                r,
                outcome="completed",
                duration_s=2.5,
                participants=len(cohort),
                stages_s=STAGES,
            )
        log.daemon_stop(reason="shutdown")


def read_entries(path) -> list[dict]:
    """The entries of an audit log that verifies (the test fails naming the first bad one)."""
    import json
    from pathlib import Path

    from p2pfed.governance.audit import verify_log

    report = verify_log(path)
    assert report.ok, report.summary()
    return [json.loads(line) for line in Path(path).read_bytes().splitlines()]


def whole_entries(state: Path) -> list[dict[str, Any]]:
    """A member's audit entries; a running daemon may be writing the last line: skipped."""
    lines = (state / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]

"""Roster expiry is explicit: warned about ahead of time; after it rounds stop, ε stays put."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import trio

from p2pfed.errors import ConfigError
from p2pfed.governance.audit import AuditLog
from p2pfed.governance.metrics import NodeMetrics
from p2pfed.governance.models import ModelRegistry
from p2pfed.governance.recorder import GovernanceRecorder
from p2pfed.identity import RosterError, RosterGate, RosterProblem, RosterStore
from p2pfed.identity.expiry import ExpiryWatch
from p2pfed.lifecycle import expiry_guard, roster_expired, stop_reason
from p2pfed.node import Peer
from tests.governance_helpers import SALT, make_signer
from tests.test_node import Consortium
from tests.test_roster import ADMINS, NOW, roster, signed

EXPIRES = NOW + timedelta(days=10)


def expiring(version: int = 1, at: datetime = EXPIRES):  # type: ignore[no-untyped-def]
    return signed(roster(version=version).with_expiry(at), ADMINS[0])


def test_the_watch_warns_once_per_threshold_then_refuses_after_expiry() -> None:
    clock = [NOW]
    current = [expiring()]
    watch = ExpiryWatch(lambda: current[0], lambda: clock[0])
    first = watch.check()
    assert first.warning is None and first.seconds_left == timedelta(days=10).total_seconds()
    clock[0] = EXPIRES - timedelta(days=6)
    week = watch.check()
    assert week.new_warning and week.warning is not None and "6.0 days" in week.warning
    assert not watch.check().new_warning  # said once, not every round
    clock[0] = EXPIRES - timedelta(hours=5)
    day = watch.check()
    assert day.new_warning and day.warning is not None and "5.0 hours" in day.warning
    clock[0] = EXPIRES - timedelta(seconds=30)
    assert "(in 30 seconds)" in str(watch.check().warning)
    # A renewed roster counts from the moment the gate accepts it.
    current[0] = expiring(5, EXPIRES + timedelta(days=30))  # version 6
    assert watch.check().warning is None
    clock[0] = EXPIRES + timedelta(days=30)
    with pytest.raises(RosterError, match=r"roster version 6 expired at .*: rounds stopped") as e:
        watch.check()
    assert e.value.problem is RosterProblem.EXPIRED
    with pytest.raises(ConfigError, match="positive time before expiry"):
        ExpiryWatch(lambda: current[0], lambda: clock[0], (timedelta(0),))


def test_the_daemon_guard_reports_status_metric_log_and_one_audited_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = expiring()
    v1.save(tmp_path / "roster.json")
    clock = [EXPIRES - timedelta(days=3)]
    gate = RosterGate.open(
        tmp_path / "roster.json", state=tmp_path / "s.json", clock=lambda: clock[0]
    )
    status: dict[str, object] = {"state": "running"}
    metrics = NodeMetrics()
    written: list[dict[str, object]] = []
    guard = expiry_guard(gate, status, metrics, lambda: written.append(dict(status)))
    with caplog.at_level(logging.WARNING, logger="p2pfed.daemon"):
        guard()
        guard()
    warnings = [r.getMessage() for r in caplog.records if "expires at" in r.getMessage()]
    assert len(warnings) == 1 and "ask the consortium admins to renew it" in warnings[0]
    assert len(written) == 1 and written[0]["roster_warning"] == warnings[0]
    assert status["roster_expires_in_s"] == timedelta(days=3).total_seconds()
    assert b"p2pfed_roster_expiry_seconds 259200.0" in metrics.render()
    clock[0] = EXPIRES
    assert not gate(v1.members[0].peer_id)  # the gate already refuses everyone
    with pytest.raises(RosterError) as info:
        guard()
    assert b"p2pfed_roster_expiry_seconds 0.0" in metrics.render()
    assert roster_expired(status, info.value)
    assert status["state"] == "roster-expired"
    sentence = stop_reason(status)
    assert sentence == str(info.value) and sentence.count(". ") == 0
    # The audit log's daemon_stop carries that sentence.
    audit = AuditLog(tmp_path / "audit.jsonl", make_signer(b"\x07" * 32), salt=SALT)
    GovernanceRecorder(audit, ModelRegistry(tmp_path / "models")).stop(reason=sentence)
    last = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "daemon_stop" and last["body"]["reason"] == sentence
    assert not roster_expired(status, RosterError(RosterProblem.TAMPERED, "tampered"))


@pytest.mark.slow
@pytest.mark.parametrize("during", [False, True], ids=["between-rounds", "mid-round"])
async def test_after_expiry_no_round_runs_and_no_epsilon_is_spent(
    tmp_path: Path, during: bool
) -> None:
    """Three peers whose roster expires after round 1 (``during``: after round 2 began, while
    it reconciles and trains): each stops with the sentence before round 2's release, and
    each ledger holds the releases of rounds 0 and 1 only."""
    c = Consortium(tmp_path, 3)
    store = RosterStore(tmp_path / "state.json")
    v1 = expiring()
    gate_clock = [NOW]
    gate = RosterGate(store, store.accept(v1, now=NOW), lambda: gate_clock[0])
    stopped: dict[int, RosterError] = {}
    spent: dict[int, tuple[int, float]] = {}

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                # Each peer's clock: valid until its round 1 is reported; then, mid-round,
                # valid for one more reading (round 2's start), expired after that.
                valid_reads = [math.inf]

                def clock() -> datetime:
                    valid_reads[0] -= 1
                    return NOW if valid_reads[0] >= 0 else EXPIRES

                def on_report(report) -> None:  # type: ignore[no-untyped-def]
                    if report.round == 1:
                        valid_reads[0] = 1 if during else 0

                async with c.peer(k) as peer:
                    status: dict[str, object] = {}
                    peer.guard = expiry_guard(RosterGate(store, gate.roster, clock), status, None)
                    try:
                        await peer.run(5, on_report, startup_timeout=5.0)
                    except RosterError as exc:
                        stopped[k] = exc
                    ledger = c.ledgers[k]
                    spent[k] = (len(ledger.records), ledger.spent_epsilon())
                    assert isinstance(peer, Peer) and peer.model_round == 1

            for k in range(3):
                nursery.start_soon(one, k)
    assert set(stopped) == {0, 1, 2}
    assert all(e.problem is RosterProblem.EXPIRED for e in stopped.values())
    assert {n for n, _ in spent.values()} == {2}  # rounds 0 and 1, nothing reserved after

"""RoundReporter: a round's report reaches the audit log, the registry, status.json and the log."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from p2pfed.daemon import RoundReporter, read_status
from p2pfed.node import RoundReport
from p2pfed.node.certificates import CommitStatement, assemble
from p2pfed.node.sync import weights_digest
from p2pfed.training import ParameterLayout
from p2pfed.transport.ratelimit import Limit, StreamLimiter
from tests.reporter_fakes import FakePeer, FakeTransport, demo_member


def test_a_committed_and_a_missed_round_are_reported_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, prepared, recorder = demo_member(tmp_path)
    roster = prepared.gate.roster
    layout = ParameterLayout(("w", "b"), ((2, 3), (2,)))
    status: dict[str, object] = {"state": "starting"}
    reporter = RoundReporter(prepared, status, recorder, None, layout)
    peer = FakePeer(np.zeros(layout.size, np.float32))
    transport = FakeTransport(
        limiter=StreamLimiter({"/x": Limit(rate=1.0, burst=1)}, clock=lambda: 0.0)
    )
    reporter.running(peer, transport, roster.version)  # type: ignore[arg-type]
    assert read_status(prepared.state_dir)["state"] == "running"
    # A member over its stream rate: refusals reach the metrics and status.json.
    assert [transport.limiter.admit("m", "/x") for _ in range(3)] == [True, False, False]
    assert recorder.metrics is not None
    rendered = recorder.metrics.render().decode()
    assert 'p2pfed_exclusions_total{reason="rate-limited"} 2.0' in rendered

    members = tuple(sorted(m.peer_id for m in roster.members))
    committed = RoundReport(
        round=0,
        committed=True,
        contributors=3,
        train_loss=0.5,
        test_accuracy=0.75,
        test_loss=0.4,
        epsilon=None,
        bytes_sent=100,
        duration_s=0.25,
        model_digest="ab" * 16,
        cohort=members,
    )
    peer.model_round, peer.bytes_sent = 0, 100
    with caplog.at_level(logging.INFO, logger="p2pfed.daemon"):
        reporter.on_report(committed)
        peer.weights = peer.weights + 1.0
        reporter.on_report(
            dataclasses.replace(committed, round=1, committed=False, reason="timeout", cohort=())
        )
    recorder.stop(reason="finished")

    written = read_status(prepared.state_dir)
    assert written is not None
    assert written["round"] == 1 and written["completed_round"] == 0
    assert written["model_version"] and written["drift_alerts"] == []
    assert written["connected_peers"] == 2 and written["bytes_sent"] == 100
    assert written["refused_streams"] == 2
    assert written["last"]["reason"] == "timeout" and "cohort" not in written["last"]
    assert [r.getMessage() for r in caplog.records if r.name == "p2pfed.daemon"] == [
        "round 0 committed: accuracy 0.750, eps off, 3 contributors",
        "round 1 missed (timeout): accuracy 0.750, eps off, 3 contributors",
    ]
    entries = [
        json.loads(x) for x in (prepared.state_dir / "audit.jsonl").read_text().split("\n") if x
    ]
    kinds = [e["kind"] for e in entries]
    assert kinds == [
        "round_start",
        "cohort",
        "model_version",
        "dp",
        "round_end",
        "round_start",
        "cohort",
        "round_end",
        "daemon_stop",
    ]
    assert entries[4]["body"]["outcome"] == "completed"
    assert entries[7]["body"] == {
        "round": 1,
        "outcome": "failed",
        "duration_s": 0.25,
        "participants": 0,
        "reason": "timeout",
    }
    dp = entries[3]["body"]
    assert dp["accountant"] == "off" and dp["noise_multiplier"] == 0.0
    assert [m.round for m in recorder.registry.versions()] == [0]


def test_a_late_certificate_of_the_model_held_reaches_the_registry_audit_and_status(
    tmp_path: Path,
) -> None:
    """Round 0 committed uncertified (its votes came late); the certificate follows."""
    _, prepared, recorder = demo_member(tmp_path)
    roster = prepared.gate.roster
    layout = ParameterLayout(("w", "b"), ((2, 3), (2,)))
    reporter = RoundReporter(prepared, {"state": "starting"}, recorder, None, layout)
    peer = FakePeer(np.linspace(-1, 1, layout.size).astype(np.float32), model_round=0)
    reporter.running(peer, FakeTransport(), roster.version)  # type: ignore[arg-type]
    members = tuple(sorted(m.peer_id for m in roster.members))
    reporter.on_report(
        RoundReport(0, True, 3, 0.5, 0.75, 0.4, None, 100, 0.25, "ab" * 16, cohort=members)
    )
    assert read_status(prepared.state_dir)["certified"] is False
    (manifest,) = recorder.registry.versions()
    assert not recorder.registry.certificate_file(manifest).exists()

    statement = CommitStatement(
        roster.consortium_id, roster.version, 0, weights_digest(peer.weights), members
    )
    certificate = assemble(statement, [(p, b"\1" * 64) for p in members])
    reporter.certified_late(certificate)
    recorder.stop(reason="finished")

    assert read_status(prepared.state_dir)["certified"] is True
    stored = json.loads(recorder.registry.certificate_file(manifest).read_text())
    assert stored == certificate.to_dict()
    entries = [json.loads(x) for x in (prepared.state_dir / "audit.jsonl").read_text().splitlines()]
    (late,) = [e for e in entries if e["kind"] == "model_certified"]
    assert late["body"]["model_hash"] == manifest.model_hash and late["body"]["stored"] is True
    assert late["body"]["certificate"] == certificate.summary()

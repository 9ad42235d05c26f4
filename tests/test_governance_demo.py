"""Three peers run federated rounds in one process and leave governance records behind.

This stands in for the daemon's demo until it exists: each peer trains on its own
Dirichlet share of a real clinical data set, the shared weights are averaged (as the ring
all-reduce would), and each peer's GovernanceRecorder writes its audit log, model registry,
drift alerts and metrics. Every log must verify and all must agree.
"""

import json
import logging

import numpy as np
import torch

from p2pfed.cli import main
from p2pfed.errors import ReasonCode
from p2pfed.governance.audit import AuditLog, compare_logs, verify_log
from p2pfed.governance.drift import DriftConfig, DriftKind, DriftMonitor
from p2pfed.governance.metrics import NodeMetrics
from p2pfed.governance.models import ModelRegistry, flat_from_tensors, tensors_from_flat
from p2pfed.governance.recorder import DPRecord, GovernanceRecorder
from p2pfed.training import (
    LocalTrainer,
    TrainingConfig,
    build_model,
    dirichlet_split,
    load_builtin,
    train_test_split,
)
from tests.governance_helpers import SALT, FakeClock, make_signer

ROUNDS = 4


def standardise(data):
    mu, sd = data.x.mean(0), data.x.std(0) + 1e-6
    return type(data)(
        ((data.x - mu) / sd).astype(np.float32), data.y, data.feature_names, data.name
    )


def test_three_peers_leave_logs_that_verify_and_agree(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="p2pfed.governance")
    data = standardise(load_builtin("breast_cancer"))
    rng = np.random.default_rng(0)
    parts = dirichlet_split(data.y, 3, alpha=1.0, rng=rng, min_size=60)
    peers = []
    for i, idx in enumerate(parts):
        signer = make_signer(bytes([i + 1]) * 32)
        train, val = train_test_split(data.subset(idx, f"h{i}"), 0.3, rng)
        model = build_model("logistic", data.n_features, 2, seed=0)
        trainer = LocalTrainer(
            model,
            TrainingConfig(learning_rate=0.1, batch_size=128),
            torch.Generator().manual_seed(i),
        )
        drift = DriftMonitor(DriftConfig(), classes=2)
        drift.set_reference(train)
        home = tmp_path / f"h{i}"
        home.mkdir()
        recorder = GovernanceRecorder(
            AuditLog(home / "audit.jsonl", signer, salt=SALT, clock=FakeClock()),
            ModelRegistry(home / "models", clock=FakeClock()),
            drift=drift,
            metrics=NodeMetrics(),
        )
        recorder.start(
            software_version="test", consortium="demo", roster_version=1, roster_digest="ab" * 32
        )
        peers.append((signer, train, val, trainer, recorder))
    ids = [p[0].peer_id for p in peers]
    layout = peers[0][3].layout
    weights = peers[0][3].shared_weights()
    for r in range(1, ROUNDS + 1):
        for _, _, _, _, rec in peers:
            rec.begin_round(r, roster_version=1, mode="ring", cohort=ids)
        updates = [t.train_round(train, weights).update for _, train, _, t, _ in peers]
        weights = weights + np.mean(updates, axis=0)
        tensors = tensors_from_flat(layout.names, layout.shapes, weights)
        for k, (_, train, val, trainer, rec) in enumerate(peers):
            trainer.load_shared(weights)
            m = trainer.score(val)
            current = train
            if k == 2 and r == ROUNDS:  # peer 2's intake changes in the last round
                x = train.x.copy()
                x[:, 0] += 2.0
                current = type(train)(x, train.y, train.feature_names, train.name)
            if k == 1 and r == 2:
                rec.exclude(r, "12D3KooWlate", ReasonCode.TIMEOUT, "no share by the deadline")
            record = rec.finish_round(
                r,
                tensors,
                dp=DPRecord(1.1, 1.0, 1.0, 1e-5, 0.4 * r, "pld", epsilon_budget=8.0),
                metrics={"accuracy": m.accuracy, "loss": m.loss},
                duration_s=1.5,
                data=current,
                bytes_sent=1000,
                bytes_received=1000,
            )
            assert (k == 2 and r == ROUNDS) == any(
                a.kind == DriftKind.FEATURE_SHIFT for a in record.alerts
            )
    for _, _, _, _, rec in peers:
        rec.stop()

    logs = [tmp_path / f"h{i}" / "audit.jsonl" for i in range(3)]
    for i, path in enumerate(logs):
        report = verify_log(path, public_key=peers[i][0].public_key)
        assert report.ok, report.summary()
    report = compare_logs(logs)
    assert report.ok and report.agreed == ROUNDS and report.missing == {}
    # Every registry holds the same chain, ending in the weights the peers hold now.
    heads = {
        ModelRegistry(tmp_path / f"h{i}" / "models").resolve("latest").model_hash for i in range(3)
    }
    assert len(heads) == 1
    _, tensors = ModelRegistry(tmp_path / "h0" / "models").load("latest")
    assert np.array_equal(flat_from_tensors(tensors), weights.astype(np.float32))
    assert len(ModelRegistry(tmp_path / "h0" / "models").lineage("latest")) == ROUNDS
    # Peer 2's log carries the drift alert, peer 1's the exclusion; metrics agree.
    kinds = [json.loads(x)["kind"] for x in logs[2].read_text().splitlines()]
    assert "drift_alert" in kinds
    assert "exclusion" in [json.loads(x)["kind"] for x in logs[1].read_text().splitlines()]
    text = peers[1][4].metrics.render().decode()
    assert 'p2pfed_exclusions_total{reason="timeout"} 1.0' in text
    assert f'p2pfed_rounds_total{{outcome="completed"}} {float(ROUNDS)}' in text
    assert any(r.msg == "round completed" and r.round == ROUNDS for r in caplog.records)
    assert main(["audit", "compare", *map(str, logs)]) == 0


def test_failed_round_and_restart_continue_the_chain(tmp_path):
    signer = make_signer(b"r" * 32)
    t = [("w", np.ones(3, np.float32))]
    dp = DPRecord(1.0, 1.0, 1.0, 1e-5, 0.5, "rdp")

    def recorder():
        return GovernanceRecorder(
            AuditLog(tmp_path / "a.jsonl", signer, salt=SALT), ModelRegistry(tmp_path / "m")
        )

    rec = recorder()
    rec.start(software_version="t", consortium="c", roster_version=1, roster_digest="00" * 32)
    rec.begin_round(1, roster_version=1, mode="ring", cohort=["p1", "p2"])
    first = rec.finish_round(1, t, dp=dp, metrics={}, duration_s=1.0).manifest
    rec.begin_round(2, roster_version=1, mode="ring", cohort=["p1"])
    rec.fail_round(2, duration_s=3.0, reason="cohort below threshold")
    rec.roster_changed(old_version=1, new_version=2, roster_digest="11" * 32, added=["p3"])
    rec.stop()
    rec = recorder()  # restart: the parent is remembered from the registry
    assert rec.latest_model_hash == first.model_hash
    rec.begin_round(3, roster_version=2, mode="ring", cohort=["p1", "p3"])
    third = rec.finish_round(
        3, [("w", np.full(3, 2, np.float32))], dp=dp, metrics={}, duration_s=1.0
    )
    rec.stop()
    assert third.manifest.parent_hash == first.model_hash
    entries = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    failed = next(e for e in entries if e["kind"] == "round_end" and e["body"]["round"] == 2)
    assert (
        failed["body"]["outcome"] == "failed"
        and failed["body"]["reason"] == "cohort below threshold"
    )
    assert verify_log(tmp_path / "a.jsonl").ok

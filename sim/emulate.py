"""Emulation: the same scenario on real peer daemons over libp2p on loopback (N ≤ 8).

Theory of operation: the scenario's own data split and partition (the simulator's seeded
streams, so both runs see the same patients at the same peers) are written as one CSV per
peer, already standardised. ``p2pfed.consortium`` then plays the consortium: keys, a signed
roster, one config per peer (ring all-reduce with secure aggregation; the scenario's
learning rate, batch size and local steps; peer-level DP as distributed noise when the
scenario enables it), and one ``p2pfed run`` process per peer. Afterwards every peer's
model registry holds each round's aggregated model; evaluating those on the scenario's
test set gives the simulator's per-round metrics (accuracy mean/min/max, losses, consensus
distance, bytes sent per peer, ε), written as the same ``metrics.csv`` columns.

What cannot be emulated is refused with one sentence: gossip, gradient tracking and the
local-only baseline (the daemon averages over a ring), faults (a real run has its own),
more than 8 peers, an MLP whose width differs from the daemon's built-in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pfed.consortium import Consortium, enrol, member_config, render_toml
from p2pfed.errors import ConfigError
from p2pfed.governance.models import ModelRegistry
from p2pfed.training.data import Dataset as PeerData
from p2pfed.training.models import build_model
from p2pfed.training.params import ParameterLayout
from sim.data import SplitData, load_dataset
from sim.engine import _seeds  # the simulator's own seeded streams
from sim.partition import partition
from sim.results import RoundRecord
from sim.scenario import Scenario

MAX_PEERS = 8


def check_emulable(s: Scenario) -> None:
    """Refuse, naming the key, what the daemon cannot run as the simulator does."""
    if not 3 <= s.n <= MAX_PEERS:
        raise ConfigError(f"emulation runs 3..{MAX_PEERS} real peers; the scenario has n = {s.n}")
    if s.algorithm.name not in ("fedavg", "fedprox"):
        raise ConfigError(
            f"scenario key [algorithm] name = {s.algorithm.name!r} cannot be emulated: the "
            "daemon averages over a ring (use fedavg or fedprox)"
        )
    if s.algorithm.weighting == "examples" and s.privacy.enabled:
        raise ConfigError(
            "scenario [algorithm] weighting = examples with [privacy] enabled cannot be "
            'emulated: the daemon refuses [rounds] weighting = "examples" with privacy on'
        )
    if s.selection.mode != "all" or s.selection.fraction < 1.0:
        raise ConfigError("scenario [selection] cannot be emulated: every daemon trains")
    f = s.faults
    if f.dropout or f.straggler_prob or f.link_failure or f.byzantine:
        raise ConfigError("scenario [faults] cannot be emulated: a real run has its own faults")
    if s.model.name not in ("logreg", "mlp"):
        raise ConfigError(f"scenario key [model] name = {s.model.name!r} cannot be emulated")
    if s.model.factory:
        raise ConfigError(
            "scenario key [model] factory cannot be emulated: the daemon builds its own model"
        )
    c = s.compression
    if c.scheme != "none" and (
        s.privacy.enabled or not c.error_feedback or s.algorithm.weighting != "uniform"
    ):
        raise ConfigError(
            "scenario [compression] cannot be emulated with [privacy] enabled (the daemon runs "
            "it as distributed noise, refused with compression), without error_feedback or "
            'with weighting = "examples"'
        )


def _peer_data(data: SplitData, idx: np.ndarray, name: str) -> PeerData:
    names = tuple(f"x{i}" for i in range(data.features))
    return PeerData(data.train.x[idx].astype(np.float32), data.train.y[idx], names, name)


def build(s: Scenario, root: Path) -> tuple[Consortium, SplitData]:
    """Write the consortium for scenario ``s`` under ``root``; returns it and the data."""
    check_emulable(s)
    seeds = _seeds(s.seed)
    data = load_dataset(s.data, np.random.default_rng(seeds["data"]))
    part = partition(
        s.partition, data.train.y, s.n, np.random.default_rng(seeds["partition"]), data.partition
    )
    slices = [
        (f"peer-{i}", _peer_data(data, part.indices[i, : part.counts[i]], f"peer-{i}"))
        for i in range(s.n)
    ]
    hospitals, _ = enrol(root, "emulation", slices)
    consortium = Consortium(root, hospitals, "emulation")
    tables = {
        "training": _training(s),
        "privacy": _privacy(s),
        "model": {"kind": "mlp", "hidden": [s.model.hidden]}
        if s.model.name == "mlp"
        else {"kind": "logistic"},
        "schema": {
            "labels": list(range(data.classes)),
            "center": [0.0] * data.features,
            "scale": [1.0] * data.features,
        },
        "validation": {"min_samples": 1, "max_label_skew": 1.0},
    }
    for h in hospitals:
        config = member_config(h, rounds=s.rounds, **tables)
        config["rounds"]["weighting"] = s.algorithm.weighting
        if s.compression.scheme != "none":  # the daemon's quantiser range is [secagg]'s
            config["rounds"]["compression"] = s.compression.scheme
            config["secagg"]["clip_range"] = s.compression.clip
        h.config.write_text(render_toml(config, f"Emulation of scenario {s.name}, {h.name}."))
    return consortium, data


def _training(s: Scenario) -> dict[str, Any]:
    t = s.training
    training: dict[str, Any] = {
        "batch_size": t.batch_size,
        "learning_rate": t.lr,
        "weight_decay": t.weight_decay,
        "fedprox_mu": s.algorithm.mu if s.algorithm.name == "fedprox" else 0.0,
    }
    if t.local_epochs > 0:
        training["local_epochs"] = t.local_epochs
    else:
        training["local_steps"] = max(1, t.local_steps)
    return training


def _privacy(s: Scenario) -> dict[str, Any]:
    if not s.privacy.enabled:
        return {"mode": "off"}
    return {
        "mode": "distributed",
        "clip_norm": s.privacy.clip,
        "noise_multiplier": s.privacy.noise_multiplier,
        "delta": s.privacy.delta,
        "accountant": s.privacy.accountant,
        "epsilon_budget": 1e6,
    }


def records(consortium: Consortium, data: SplitData, s: Scenario) -> list[RoundRecord]:
    """Per-round metrics from every peer's model registry, as the simulator reports them."""
    hidden = (s.model.hidden,) if s.model.name == "mlp" else (1,)
    kind = "mlp" if s.model.name == "mlp" else "logistic"
    model = build_model(kind, data.features, data.classes, hidden)
    layout = ParameterLayout.of(model)
    x = torch.from_numpy(data.test.x.astype(np.float32))
    y = torch.from_numpy(data.test.y)
    per_round: dict[int, list[tuple[float, float, np.ndarray, float, float | None]]] = {}
    for h in consortium.hospitals:
        registry = ModelRegistry(h.state / "models")
        for manifest in registry.versions():
            _, tensors = registry.load(manifest.version)
            flat = np.concatenate([np.asarray(t, np.float32).ravel() for _, t in tensors])
            layout.load_flat(model, flat)
            with torch.no_grad():
                logits = model(x)
                loss = float(torch.nn.functional.cross_entropy(logits, y))
                acc = float((logits.argmax(1) == y).float().mean())
            eps = manifest.dp.get("epsilon") if s.privacy.enabled else None
            sent = float(manifest.metrics.get("bytes_sent", 0.0))
            per_round.setdefault(manifest.round, []).append((acc, loss, flat, sent, eps))
    out = []
    cumulative = 0.0
    for r in sorted(per_round):
        rows = per_round[r]
        accs = np.array([row[0] for row in rows])
        weights = np.stack([row[2] for row in rows])
        sent_bytes = np.array([row[3] for row in rows])
        cumulative += float(sent_bytes.mean())
        eps = [row[4] for row in rows if row[4] is not None]
        out.append(
            RoundRecord(
                round=r + 1,  # the simulator's round 0 is the initial state
                accuracy_mean=float(accs.mean()),
                accuracy_min=float(accs.min()),
                accuracy_max=float(accs.max()),
                average_model_accuracy=float(accs.mean()),
                test_loss_mean=float(np.mean([row[1] for row in rows])),
                train_loss_mean=math.nan,
                consensus_distance=float(
                    np.linalg.norm(weights - weights.mean(0)) / math.sqrt(len(rows))
                ),
                bytes_sent_mean=float(sent_bytes.mean()),
                bytes_sent_max=float(sent_bytes.max()),
                bytes_cumulative_mean=cumulative,
                comm_time_s=math.nan,
                active_peers=len(rows),
                epsilon=max(eps) if eps else None,
            )
        )
    return out

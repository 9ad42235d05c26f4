"""The demo consortium: N hospitals on one machine, real daemons over libp2p.

Heavy libraries (torch, the daemon) are imported inside the functions that need them, so
``p2pfed --help`` does not pay for them.

Theory of operation: ``build_consortium`` plays the consortium's admins and each hospital's
IT team in a temporary folder — an admin key, one identity per hospital, a signed roster
with loopback addresses, each hospital's slice of scikit-learn's breast-cancer data
(Dirichlet label skew) as its own CSV file, and a config per hospital with secure
aggregation and DP-SGD on. ``launch`` starts one ``p2pfed run`` process per hospital;
``watch`` follows their ``status.json`` files. ``references`` then trains, in-process and
with the same model and epochs, the two baselines the federated model is judged against:
each hospital alone (local-only) and all data pooled without privacy (centralized). The
held-out test set never reaches any hospital.

The schema's normalisation constants are computed from the pooled training rows here; they
stand in for the published reference ranges a real consortium would agree on.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.errors import LocalError
from p2pfed.identity import Identity, Member, Roster
from p2pfed.training.data import Dataset, dirichlet_split, load_builtin, train_test_split

CONSORTIUM = "demo-consortium"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: sizes, skew, rounds and the privacy/training parameters."""

    peers: int = 4
    rounds: int = 10
    alpha: float = 0.5
    seed: int = 0
    local_epochs: int = 1
    learning_rate: float = 0.5
    noise_multiplier: float = 2.0
    clip_norm: float = 1.0
    batch_size: int = 16
    delta: float = 1e-5
    epsilon_budget: float = 50.0
    test_fraction: float = 0.2


@dataclass
class Hospital:
    """One demo member: its folder, identity, data slice and port."""

    name: str
    folder: Path
    identity: Identity
    port: int
    rows: int
    train: Dataset
    process: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def config(self) -> Path:
        """Its config.toml."""
        return self.folder / "config.toml"

    @property
    def state(self) -> Path:
        """Its state folder (status, checkpoint, ledger)."""
        return self.folder / "state"


@dataclass
class Consortium:
    """The built demo: hospitals, the pooled train/test split and the normalisation."""

    root: Path
    settings: DemoSettings
    hospitals: list[Hospital]
    pooled: Dataset
    test: Dataset
    center: np.ndarray
    scale: np.ndarray
    started: float = field(default_factory=time.monotonic)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_csv(path: Path, data: Dataset) -> None:
    """Write ``data`` as CSV: the feature columns, then ``label``."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*data.feature_names, "label"])
        for row, label in zip(data.x.tolist(), data.y.tolist(), strict=True):
            writer.writerow([repr(v) for v in row] + [label])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def render_toml(tables: dict[str, dict[str, Any]], comment: str) -> str:
    """A config file from tables of scalars and lists (all a daemon config needs)."""
    lines = [f"# {comment}"]
    for table, keys in tables.items():
        lines.append(f"\n[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def member_config(
    h: Hospital,
    *,
    rounds: int,
    schema: dict[str, Any],
    training: dict[str, Any],
    privacy: dict[str, Any],
    model: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The config tables of one member on loopback (demo and emulation)."""
    return {
        "node": {"name": h.name, "identity": "identity.key", "state_dir": "state"},
        "network": {"listen": f"/ip4/127.0.0.1/tcp/{h.port}", "roster": "roster.json"},
        "rounds": {"mode": "ring", "rounds": rounds, "round_timeout_s": 60.0},
        "model": model or {"kind": "logistic"},
        "data": {"path": "patients.csv", "label_column": "label", "test_fraction": 0.2},
        "schema": schema,
        "validation": validation or {},
        "training": training,
        "privacy": {"ledger": "state/privacy.ledger", **privacy},
        "secagg": {"enabled": True},
    }


def _config(h: Hospital, c: Consortium) -> str:
    s = c.settings
    # Expected batch of batch_size patients from the local training part (80 % of rows).
    q = min(1.0, s.batch_size / max(1, int(h.rows * 0.8)))
    counts = np.bincount(c.pooled.y, minlength=2)
    shares = counts / counts.sum()
    shares[-1] = 1.0 - shares[:-1].sum()  # exactly 1 after printing and parsing
    tables = member_config(
        h,
        rounds=s.rounds,
        schema={
            "features": list(c.pooled.feature_names),
            "labels": [0, 1],
            "label_distribution": shares.tolist(),
            "center": c.center.astype(float).tolist(),
            "scale": c.scale.astype(float).tolist(),
        },
        # The demo skews labels on purpose (Dirichlet alpha): a permissive skew limit.
        validation={"min_samples": 20, "max_label_skew": 0.65},
        training={
            "local_epochs": s.local_epochs,
            "batch_size": s.batch_size,
            "learning_rate": s.learning_rate,
        },
        privacy={
            "mode": "dp-sgd",
            "clip_norm": s.clip_norm,
            "noise_multiplier": s.noise_multiplier,
            "sample_rate": q,
            "steps_per_round": s.local_epochs * int(np.ceil(1.0 / q)),
            "delta": s.delta,
            "epsilon_budget": s.epsilon_budget,
        },
    )
    return render_toml(tables, f"Demo hospital {h.name} (generated by p2pfed demo).")


def build_consortium(root: Path, settings: DemoSettings) -> Consortium:
    """Keys, signed roster, data slices and configs for ``settings.peers`` hospitals."""
    if settings.peers < 3:
        raise LocalError(
            f"the demo needs at least 3 hospitals for secure aggregation, got {settings.peers}"
        )
    rng = np.random.default_rng(settings.seed)
    data = load_builtin("breast_cancer")
    pooled, test = train_test_split(data, settings.test_fraction, rng)
    center = pooled.x.mean(axis=0)
    scale = pooled.x.std(axis=0) + 1e-6
    parts = dirichlet_split(pooled.y, settings.peers, settings.alpha, rng, min_size=60)
    ports = free_ports(settings.peers)
    admin = Identity.generate()
    root.mkdir(parents=True, exist_ok=True)
    admin.save(root / "admin.key")
    hospitals = []
    for i, (idx, port) in enumerate(zip(parts, ports, strict=True)):
        name = f"hospital-{chr(ord('a') + i)}"
        folder = root / name
        folder.mkdir()
        identity = Identity.generate()
        identity.save(folder / "identity.key")
        part = pooled.subset(idx, name)
        write_csv(folder / "patients.csv", part)
        hospitals.append(Hospital(name, folder, identity, port, len(part), part))
    members = tuple(
        Member.from_public_key(h.name, h.identity.public_key, [f"/ip4/127.0.0.1/tcp/{h.port}"])
        for h in hospitals
    )
    roster = Roster(
        CONSORTIUM,
        1,
        datetime.now(UTC) + timedelta(days=1),
        members,
        (admin.public_key,),
    ).signed_by(admin)
    consortium = Consortium(root, settings, hospitals, pooled, test, center, scale)
    for h in hospitals:
        roster.save(h.folder / "roster.json")
        h.config.write_text(_config(h, consortium))
    return consortium


def launch(consortium: Consortium, which: list[Hospital] | None = None) -> None:
    """Start one ``p2pfed run`` process per hospital (or the given ones)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for h in which or consortium.hospitals:
        if h.log is not None:
            h.log.close()  # a restart: the previous process's log handle
        h.log = (h.folder / "daemon.log").open("ab")
        h.process = subprocess.Popen(
            [sys.executable, "-m", "p2pfed", "run", "--config", str(h.config)],
            stdout=h.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=h.folder,
        )


def statuses(consortium: Consortium) -> list[dict[str, Any]]:
    """The latest status of each hospital (empty dict before its first write)."""
    from p2pfed.daemon import read_status

    out = []
    for h in consortium.hospitals:
        try:
            out.append(read_status(h.state) or {})
        except LocalError:
            out.append({})  # being replaced right now; next poll reads it
    return out


def watch(
    consortium: Consortium,
    timeout: float,
    on_tick: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Wait for every daemon to exit; raise naming the first that failed or hung."""
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(consortium)
        if on_tick is not None:
            on_tick(current)
        running = [h for h in consortium.hospitals if h.process and h.process.poll() is None]
        failed = [
            h for h in consortium.hospitals if h.process and h.process.poll() not in (None, 0)
        ]
        if not running or failed:
            break
        if time.monotonic() > deadline:
            stop(consortium)
            raise LocalError(
                f"the demo did not finish within {timeout:.0f} s; logs are in {consortium.root}"
            )
        time.sleep(0.5)
    for h in consortium.hospitals:
        if h.process is not None and h.process.returncode not in (None, 0):
            stop(consortium)
            tail = (h.folder / "daemon.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise LocalError(
                f"{h.name}'s daemon exited with status {h.process.returncode}: " + " | ".join(tail)
            )
    return statuses(consortium)


def stop(consortium: Consortium) -> None:
    """Terminate every daemon still running (SIGTERM, then SIGKILL after 5 s)."""
    for h in consortium.hospitals:
        if h.process is not None and h.process.poll() is None:
            h.process.send_signal(signal.SIGTERM)
    for h in consortium.hospitals:
        if h.process is not None:
            try:
                h.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.process.kill()
                h.process.wait()
        if h.log is not None:
            h.log.close()
            h.log = None


def _scaled(c: Consortium, d: Dataset) -> Dataset:
    return Dataset(((d.x - c.center) / c.scale).astype(np.float32), d.y, d.feature_names, d.name)


def _train_plain(c: Consortium, data: Dataset, epochs: int) -> float:
    import torch

    from p2pfed.training.models import build_model
    from p2pfed.training.trainer import LocalTrainer, TrainingConfig

    s = c.settings
    trainer = LocalTrainer(
        build_model("logistic", data.n_features, 2, seed=s.seed),
        TrainingConfig(local_epochs=epochs, batch_size=s.batch_size, learning_rate=s.learning_rate),
        torch.Generator().manual_seed(s.seed),
    )
    trainer.train_round(_scaled(c, data), trainer.shared_weights())
    return trainer.evaluate(_scaled(c, c.test)).accuracy


def references(c: Consortium) -> tuple[float, list[float]]:
    """(centralized accuracy, local-only accuracy per hospital) on the held-out test set.

    Both non-private and trained for the same number of epochs as the federation.
    """
    epochs = c.settings.rounds * c.settings.local_epochs
    centralized = _train_plain(c, c.pooled, epochs)
    local = [_train_plain(c, h.train, epochs) for h in c.hospitals]
    return centralized, local


def check_audit_logs(c: Consortium) -> tuple[bool, bool]:
    """(every hospital's audit log verifies against the roster, all agree on every round)."""
    from p2pfed.governance.audit import compare_logs, verify_log

    members = {h.identity.peer_id: h.identity.public_key for h in c.hospitals}
    paths = [h.state / "audit.jsonl" for h in c.hospitals]
    verified = all(verify_log(p, members=members).problem is None for p in paths)
    return verified, compare_logs(paths, members=members).ok


def federated_accuracy(c: Consortium, h: Hospital) -> float:
    """Accuracy of ``h``'s final federated model on the held-out test set."""
    from p2pfed.training.models import build_model
    from p2pfed.training.trainer import LocalTrainer, TrainingConfig

    trainer = LocalTrainer(build_model("logistic", c.pooled.n_features, 2), TrainingConfig())
    trainer.load_checkpoint(h.state / "checkpoint.pt")
    return trainer.evaluate(_scaled(c, c.test)).accuracy

"""A consortium on one machine: N member daemons on loopback, launched, watched and stopped.

Theory of operation: ``enrol`` plays the admins and each member's IT team in a folder — an
admin key, one identity, data file (CSV) and free loopback port per member, and a roster
signed by the admin, saved in every member's folder. The caller then writes each member's
``config.toml`` (``member_config`` gives the tables every local member shares,
``render_toml`` the file). ``launch`` starts one ``p2pfed run`` process per member,
``watch`` follows their ``status.json`` files until every process has exited (naming the
first that failed, or giving up after a timeout), and ``stop`` ends what still runs. The
demo (``p2pfed.demo``) and the emulation (``sim.emulate``) are the two users.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np

from p2pfed.errors import LocalError
from p2pfed.identity import Identity, Member, Roster
from p2pfed.training.data import Dataset

ROSTER_LIFETIME = timedelta(days=1)


@dataclass
class Hospital:
    """One local member: its folder, identity, data slice, port and daemon process."""

    name: str
    folder: Path
    identity: Identity
    port: int
    rows: int
    train: Dataset
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

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
    """Local members under one folder; ``label`` names the run in messages (``demo``)."""

    root: Path
    hospitals: list[Hospital]
    label: str


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


def enrol(
    root: Path, consortium: str, members: Sequence[tuple[str, Dataset]]
) -> tuple[list[Hospital], Identity]:
    """Folders, identities, data files and ports for ``members``, and the signed roster.

    Returns the members and the admin identity that signed the roster (saved nowhere: the
    caller decides whether to keep it).
    """
    ports = free_ports(len(members))
    admin = Identity.generate()
    root.mkdir(parents=True, exist_ok=True)
    hospitals = []
    for (name, data), port in zip(members, ports, strict=True):
        folder = root / name
        folder.mkdir()
        identity = Identity.generate()
        identity.save(folder / "identity.key")
        write_csv(folder / "patients.csv", data)
        hospitals.append(Hospital(name, folder, identity, port, len(data), data))
    roster = Roster(
        consortium,
        1,
        datetime.now(UTC) + ROSTER_LIFETIME,
        tuple(
            Member.from_public_key(h.name, h.identity.public_key, [f"/ip4/127.0.0.1/tcp/{h.port}"])
            for h in hospitals
        ),
        (admin.public_key,),
    ).signed_by(admin)
    for h in hospitals:
        roster.save(h.folder / "roster.json")
    return hospitals, admin


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


def launch(consortium: Consortium, which: list[Hospital] | None = None) -> None:
    """Start one ``p2pfed run`` process per member (or the given ones)."""
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
    """The latest status of each member (empty dict before its first write)."""
    # The daemon imports torch: loaded here, not at the top, so `p2pfed --help` (which
    # imports this module through the demo command's defaults) stays fast.
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
                f"the {consortium.label} did not finish within {timeout:.0f} s; "
                f"logs are in {consortium.root}"
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


def run_to_end(
    consortium: Consortium,
    timeout: float,
    on_tick: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Launch every member, watch until all have exited, and stop them whatever happens."""
    try:
        launch(consortium)
        return watch(consortium, timeout, on_tick)
    finally:
        stop(consortium)

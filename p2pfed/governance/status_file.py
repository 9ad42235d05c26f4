"""``status.json``: what a running daemon tells the operator, read without torch or libp2p.

Theory of operation: the daemon's ``RoundReporter`` writes the file (atomically, one line)
whenever something the operator should see changes; ``p2pfed status`` reads it back. The
reader must answer in well under a second, so this module imports neither torch, trio nor
libp2p, and it finds the state folder from the config file's ``[node]`` table alone
(``load_config`` imports the model zoo). ε spent is the daemon's own figure, written after
each charge, so reading it needs no accountant either.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from p2pfed.durable import write_json
from p2pfed.errors import ConfigError, DataError
from p2pfed.settings import read_toml

STATUS_FILE = "status.json"
DEFAULT_STATE_DIR = "state"
"""``[node] state_dir`` when the config leaves it out (``p2pfed.config.NodeSection``)."""
HEALTH_MAX_AGE_S = 600.0
"""``status --health``: a status older than this is stale. The daemon rewrites it at every
round, retry and wait (seconds apart), so 10 minutes of silence means it is stuck."""


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Atomically replace ``status.json`` (read by ``p2pfed status`` and the demo)."""
    status = {**status, "updated": time.time(), "pid": os.getpid()}
    write_json(state_dir / STATUS_FILE, status, indent=None)  # one line, as it always was


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status a daemon wrote, or None."""
    try:
        loaded: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{state_dir / STATUS_FILE} is unreadable ({exc})") from None
    return loaded


def process_alive(pid: object) -> bool:
    """Whether a process with this ID exists on this machine (False for a missing pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def node_state(config_path: str | Path) -> tuple[str, Path]:
    """The node's name and state folder from its config's ``[node]`` table."""
    config_path = Path(config_path)
    node = read_toml(config_path).get("node", {})
    if not isinstance(node, dict):
        raise ConfigError(f"{config_path}: [node] must be a table")
    name, state_dir = node.get("name", ""), node.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{config_path}: [node] name must be a non-empty string")
    if not isinstance(state_dir, str):
        raise ConfigError(f"{config_path}: [node] state_dir must be a string")
    path = Path(state_dir).expanduser()
    return name, path if path.is_absolute() else config_path.resolve().parent / path


def with_liveness(status: dict[str, Any], now: float) -> dict[str, Any]:
    """``status`` plus its age, whether its writer still runs, ε left and the shown state."""
    out = dict(status)
    out["age_s"] = round(now - float(status.get("updated", 0)), 1)
    # The file outlives its writer: a killed daemon leaves "running" behind.
    out["running"] = process_alive(status.get("pid"))
    budget, spent = status.get("epsilon_budget"), status.get("epsilon")
    if isinstance(budget, int | float) and isinstance(spent, int | float):
        out["epsilon_left"] = max(0.0, float(budget) - float(spent))
    shown = str(status.get("state"))
    if not out["running"]:
        shown = (
            f"not running (last recorded: {shown}; the daemon ended without recording a stop)"
            if shown in ("starting", "running")
            else f"{shown}, not running"
        )
    out["shown_state"] = shown
    return out


def health(status: dict[str, Any] | None, now: float, max_age: float) -> tuple[bool, str]:
    """Whether the daemon is healthy (its pid alive, its status fresh), and one line why."""
    if status is None:
        return False, "unhealthy: no status yet (the daemon has not started here)"
    shown = with_liveness(status, now)
    name, age = status.get("name", "?"), shown["age_s"]
    if not shown["running"]:
        return False, f"unhealthy: {name}: daemon pid {status.get('pid', '—')} is not running"
    if not age <= max_age:
        return False, f"unhealthy: {name}: status not updated for {age:g} s (limit {max_age:g} s)"
    return True, f"healthy: {name} {status.get('state')}, pid {status['pid']}, status {age:g} s old"

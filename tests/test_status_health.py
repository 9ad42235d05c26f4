"""``p2pfed status --health``: the container's HEALTHCHECK, one line, exit 0 only when healthy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.governance.status_file import STATUS_FILE, write_status

ROOT = Path(__file__).resolve().parents[1]


def _node(tmp_path: Path, **changes: object) -> Path:
    """A node whose status.json was written by this (live) process, with ``changes``."""
    config = tmp_path / "config.toml"
    config.write_text('[node]\nname = "hospital-a"\nstate_dir = "st"\n')
    (tmp_path / "st").mkdir()
    write_status(tmp_path / "st", {"state": "running", "name": "hospital-a"})
    if changes:
        path = tmp_path / "st" / STATUS_FILE
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return config


def _health(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    rc = main(["status", "--config", str(config), "--health", *extra])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # exactly one line
    return rc, out.strip()


def test_a_live_daemon_with_a_fresh_status_is_healthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, line = _health(_node(tmp_path), capsys)
    assert rc == 0 and line.startswith("healthy: hospital-a running, pid ")


def test_a_dead_pid_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rc, line = _health(_node(tmp_path, pid=gone.pid), capsys)
    assert rc == 1 and line == f"unhealthy: hospital-a: daemon pid {gone.pid} is not running"


def test_a_stale_status_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _node(tmp_path, updated=time.time() - 1000)
    rc, line = _health(config, capsys)
    assert rc == 1 and "status not updated for 1000" in line and "(limit 600 s)" in line
    rc, _ = _health(config, capsys, "--max-age", "2000")
    assert rc == 0


def test_no_status_yet_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _node(tmp_path)
    (tmp_path / "st" / STATUS_FILE).unlink()
    rc, line = _health(config, capsys)
    assert rc == 1 and line.startswith("unhealthy: no status yet")


def test_a_bad_config_or_status_file_is_unhealthy_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Docker reserves exit status 2: every failure of the check is 1, in one line."""
    config = _node(tmp_path)
    (tmp_path / "st" / STATUS_FILE).write_text("{")
    rc, line = _health(config, capsys)
    assert rc == 1 and line.startswith("unhealthy: ") and "status.json is unreadable" in line
    rc, line = _health(tmp_path / "nowhere.toml", capsys)
    assert rc == 1 and line.startswith("unhealthy: ") and "nowhere.toml" in line


def test_the_health_check_process_loads_neither_torch_nor_libp2p(tmp_path: Path) -> None:
    """As the HEALTHCHECK runs it: ``python -m p2pfed``; ``-X importtime`` lists every import."""
    config = _node(tmp_path)
    argv = ["-m", "p2pfed", "status", "--health", "--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("healthy: ")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert "p2pfed" in imported  # the probe did see the imports
    assert not imported & {"torch", "libp2p", "trio", "scipy", "numpy"}

"""Stopping is recorded truly: status.json, the audit log and `p2pfed status` (issue 13)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.lifecycle import ended, stop_reason
from tests.test_privacy_anchoring import run_rounds


def cancelled_the_trio_way(extra: BaseException | None = None) -> BaseException:
    """What a nursery raises when its scope is cancelled: Cancelled inside a group."""
    caught: list[BaseException] = []

    async def body() -> None:
        async def fail() -> None:
            assert extra is not None
            raise extra

        with trio.CancelScope() as scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.sleep_forever)
                    if extra is not None:
                        nursery.start_soon(fail)
                        await trio.sleep(0)
                    scope.cancel()
                    await trio.sleep_forever()
            except BaseException as exc:
                caught.append(exc)
                raise

    try:
        trio.run(body)
    except BaseException as exc:  # the error that escapes the cancelled scope
        caught.append(exc)
    return caught[0]


def test_a_cancel_inside_an_exception_group_is_a_stop() -> None:
    exc = cancelled_the_trio_way()
    assert isinstance(exc, BaseExceptionGroup)  # `except trio.Cancelled` never saw this
    status: dict[str, object] = {"state": "running", "stop_reason": "signal SIGTERM"}
    ended(status, exc)
    assert status["state"] == "stopped" and stop_reason(status) == "signal SIGTERM"
    failed = cancelled_the_trio_way(ValueError("disk full"))
    status = {"state": "running"}
    ended(status, failed)
    assert status["state"] == "error" and "disk full" in stop_reason(status)
    assert stop_reason({"state": "budget-exhausted"}) == "budget exhausted"


def test_status_says_not_running_when_the_pid_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    h = c.hospitals[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h.state.mkdir(exist_ok=True)
    (h.state / "status.json").write_text(
        json.dumps({"state": "running", "pid": dead.pid, "updated": time.time()})
    )
    assert main(["status", "--config", str(h.config)]) == 0
    assert "not running (last recorded: running" in capsys.readouterr().out
    (h.state / "status.json").write_text(
        json.dumps({"state": "running", "pid": os.getpid(), "updated": time.time()})
    )
    assert main(["status", "--config", str(h.config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is True


@pytest.mark.timeout(120)
def test_sigterm_stops_a_resumed_daemon_and_records_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=8))
    h = c.hospitals[0]
    run_rounds(load_config(h.config), range(3))  # checkpointed after round 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pfed", "run", "--config", str(h.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=h.folder,
    )
    try:
        deadline = time.monotonic() + 90
        # Wait for the event (the daemon's own "running" write), not for a guessed time.
        while (read_status(h.state) or {}).get("state") != "running":
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the daemon never reported running"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)  # bounded: it abandons the stage it was in
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.decode().strip().splitlines()[-1] == "hospital-a: stopped after round 2"
    status = read_status(h.state) or {}
    assert status["state"] == "stopped" and status["completed_round"] == 2
    assert status["stop_reason"] == "signal SIGTERM"
    entries = [json.loads(x) for x in (h.state / "audit.jsonl").read_text().splitlines()]
    assert entries[-1]["kind"] == "daemon_stop"
    assert entries[-1]["body"]["reason"] == "signal SIGTERM"
    assert main(["status", "--config", str(h.config)]) == 0
    assert "stopped, not running" in capsys.readouterr().out

"""``p2pfed run`` listens before its model is built (issue 20 item 5: start-up ≤ 3 s).

The model here is a factory that returns only once the test lets it, so what the node does
before its model exists is observed, not timed: it accepts connections, ``status.json``
says ``starting`` with the addresses it listens on, and its audit log records no start. A
model that does not fit the data stops the listening node with one sentence, still before
its audit log records a start. (Real daemons: about 15 s each at load 5, minutes at load 20.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def member(tmp_path: Path) -> Path:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    return c.hospitals[0].config


def with_model(config: Path, lines: str) -> None:
    """The member's config with ``lines`` as its ``[model]``."""
    text = config.read_text().replace('[model]\nkind = "logistic"\n', f"[model]\n{lines}\n", 1)
    assert lines in text
    config.write_text(text)


def held_until(release: Path) -> str:
    """A model built once ``release`` exists (``tests.helpers_models.held``)."""
    args = f'{{ n_features = 30, release = "{release}" }}'
    return f'factory = "tests.helpers_models:held"\nargs = {args}'


@pytest.fixture
def daemon(member: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        process = subprocess.Popen(
            [sys.executable, "-m", "p2pfed", "run", "--config", str(member)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        process.communicate()  # closes its pipes


def wait_for(what: str, found: Callable[[], Any], process: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + 240
    while True:
        got = found()
        if got:
            return got
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited ({process.returncode}) before {what}")
        assert time.monotonic() < deadline, f"no {what} within 240 s"
        time.sleep(0.05)


def audit_kinds(state: Path) -> list[str]:
    log = state / "audit.jsonl"
    if not log.exists():
        return []
    return [json.loads(line)["kind"] for line in log.read_text().splitlines() if line]


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


@pytest.mark.timeout(300)
def test_the_node_listens_and_answers_status_before_its_model_is_built(
    member: Path, daemon: Callable[[], subprocess.Popen[str]]
) -> None:
    release = member.parent / "release"
    with_model(member, held_until(release))
    state = member.parent / "state"
    process = daemon()
    status = wait_for("a status with listen addresses", lambda: read_status(state), process)
    assert status["state"] == "starting" and status["listen"], status
    port = int(status["listen"][0].rsplit("/", 1)[1])
    assert accepts(port)  # listening while the model factory has not returned
    assert "daemon_start" not in audit_kinds(state)  # nothing ran: no start is recorded
    out = subprocess.run(
        [sys.executable, "-m", "p2pfed", "status", "--json", "--config", str(member)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["state"] == "starting"
    release.touch()  # the model is built now, and the node goes on to its rounds
    wait_for("the audit log's daemon_start", lambda: "daemon_start" in audit_kinds(state), process)
    assert accepts(port)


@pytest.mark.timeout(300)
def test_a_model_that_does_not_fit_stops_the_listening_node_before_a_start_is_recorded(
    member: Path, daemon: Callable[[], subprocess.Popen[str]]
) -> None:
    with_model(
        member, 'factory = "tests.helpers_models:tiny"\nargs = { n_features = 30, n_classes = 3 }'
    )
    process = daemon()
    _, err = process.communicate(timeout=240)
    assert process.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("p2pfed: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "outputs" in lines[0] or "classes" in lines[0], lines[0]
    state = member.parent / "state"
    assert "daemon_start" not in audit_kinds(state)
    status = read_status(state)
    assert status is not None and status["state"] == "error", status

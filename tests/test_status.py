"""``p2pfed status``: quick, torch-free, and truthful about members, the pid, ε and the model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2pfed.cli import main
from p2pfed.collectives.faults import Exclusion
from p2pfed.daemon import RoundReporter, read_status
from p2pfed.errors import ReasonCode
from p2pfed.governance.status_file import write_status
from p2pfed.node import RoundReport
from p2pfed.training import ParameterLayout
from tests.reporter_fakes import FakePeer, FakeTransport, demo_member

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import contextlib, io, json, sys
from p2pfed.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main(["status", "--config", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "libp2p", "trio", "scipy"})
print(json.dumps({"rc": rc, "heavy": heavy, "out": out.getvalue()}))
"""


def _node(tmp_path: Path, status: dict[str, object]) -> Path:
    config = tmp_path / "config.toml"
    config.write_text('[node]\nname = "hospital-a"\nstate_dir = "st"\n')
    (tmp_path / "st").mkdir()
    write_status(tmp_path / "st", status)
    return config


def test_status_answers_without_importing_torch_libp2p_trio_or_scipy(tmp_path: Path) -> None:
    # What made it take 4-5 s was importing torch for a JSON read; that is what is checked
    # here (a time limit would only measure the machine's load).
    config = _node(tmp_path, {"state": "running", "name": "hospital-a", "model_version": "ab12"})
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    probe = json.loads(done.stdout)
    assert probe["rc"] == 0 and probe["heavy"] == []
    assert "model version    ab12" in probe["out"]


def test_a_status_file_left_by_a_dead_daemon_is_not_shown_as_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    config = _node(tmp_path, {"state": "running", "name": "hospital-a"})
    status = json.loads((tmp_path / "st" / "status.json").read_text())
    (tmp_path / "st" / "status.json").write_text(json.dumps(status | {"pid": gone.pid}))
    assert main(["status", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["running"] is False
    assert shown["shown_state"].startswith("not running (last recorded: running")


def test_epsilon_left_is_the_budget_less_the_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _node(tmp_path, {"state": "running", "epsilon": 1.25, "epsilon_budget": 4.0})
    assert main(["status", "--config", str(config)]) == 0
    assert "ε spent          1.2500 of 4.0, left 2.7500" in capsys.readouterr().out


def test_a_node_that_never_started_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[node]\nname = "hospital-a"\n')
    assert main(["status", "--config", str(config)]) == 1
    assert (
        capsys.readouterr().out == "hospital-a: no status yet (the daemon has not started here)\n"
    )


def test_status_shows_each_member_connected_its_last_round_and_last_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, prepared, recorder = demo_member(tmp_path)
    roster = prepared.gate.roster
    names = {m.peer_id: m.name for m in roster.members}
    me = prepared.identity.peer_id
    b, d = sorted(p for p in names if p != me)
    layout = ParameterLayout(("w",), ((3,),))
    reporter = RoundReporter(prepared, {"state": "starting"}, recorder, None, layout)
    peer = FakePeer(np.zeros(3, np.float32), model_round=0)
    reporter.running(peer, FakeTransport((b,)), roster.version)  # type: ignore[arg-type]
    report = RoundReport(
        round=0,
        committed=True,
        contributors=2,
        train_loss=0.5,
        test_accuracy=0.75,
        test_loss=0.4,
        epsilon=None,
        bytes_sent=10,
        duration_s=0.1,
        model_digest="ab" * 16,
        cohort=(me, b),
        exclusions=(Exclusion(0, d, ReasonCode.WRONG_SHAPE, "shape (3,) expected"),),
    )
    reporter.on_report(report)
    recorder.stop(reason="finished")
    written = read_status(prepared.state_dir)
    assert written is not None
    row_b = dict(written["members"][names[b]])
    # How the member is dialled (the roster's addresses), for the dashboard.
    assert row_b.pop("addresses") == [
        a for m in roster.members if m.peer_id == b for a in m.addresses
    ]
    # How it is reached: unknown here (this fake transport reports no links).
    assert row_b == {
        "connected": True,
        "last_round": 0,
        "last_error": None,
        "reached": None,
        "open_s": None,
        "rtt_s": None,
        "throughput_mbps": None,
        "unreachable": None,
    }
    assert written["members"][names[d]]["connected"] is False
    assert written["members"][names[d]]["last_round"] is None
    assert "excluded" in written["members"][names[d]]["last_error"]
    assert me not in {m.peer_id for m in roster.members if m.name in written["members"]}

    assert main(["status", "--config", str(c.hospitals[0].config)]) == 0
    out = capsys.readouterr().out
    assert "\nmembers\n" in out and f"\n  {names[b]}  connected, last round 0\n" in out
    assert f"  {names[d]}  not connected, last round —, last error: round 0: excluded" in out
    version = recorder.registry.versions()[-1].version  # the id `model list` shows
    assert re.search(rf"^model version +{version}$", out, re.MULTILINE)

    # Restarted, the node shows the model it holds before its next round.
    again = RoundReporter(prepared, {"state": "starting"}, recorder, None, layout)
    again.running(peer, FakeTransport(()), roster.version)  # type: ignore[arg-type]
    assert (read_status(prepared.state_dir) or {})["model_version"] == version

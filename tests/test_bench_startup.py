"""``p2pfed bench startup``: the JSON's shape, and the daemon listening before its model exists."""

import json
import os
import subprocess
import sys

import pytest

from p2pfed.cli import main


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_one_launch_reports_listening_before_ready_with_its_baselines() -> None:
    """One real daemon launch and both baselines: about 25 s at load 5 on 2 cores."""
    cmd = [sys.executable, "-m", "p2pfed", "bench", "startup", "--repeats", "1", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=380, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["bench"] == "startup" and report["repeats"] == 1
    assert len(report["load_avg"]["before"]) == 3 and len(report["runs"]) == 1
    assert 0 < report["listen_s"] < report["ready_s"]  # it listened before its model existed
    assert report["listen_cpu_s"] > 0 and report["listen_rss_mb"] > 0
    assert report["python_pass_s"] > 0 and report["python_import_torch_cpu_s"] > 0


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--repeats", "0"], "--repeats must lie in 1..100"), (["--timeout", "0"], "--timeout")],
)
def test_bad_options_are_refused_in_one_sentence(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "startup", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err

import json
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.privacy import PrivacyLedger, Release, epsilon_for
from p2pfed.privacy.accountants import gaussian_epsilon
from p2pfed.privacy.mechanisms import NoiseMode


def _ledger(path: Path, n: int, sigma: float = 5.0) -> None:
    with PrivacyLedger(path, 8.0, 1e-5, "pld") as led:
        for r in range(n):
            led.reserve(Release(r, sigma, 1.0, 1, 1.0, NoiseMode.DISTRIBUTED))


CONFIG = """
[node]
name = "st-olav"

[privacy]
mode = "distributed"
clip_norm = 1.0
ledger = "node.ledger"
epsilon_budget = 8.0
delta = 1e-5
accountant = "pld"
noise_multiplier = 5.0
sample_rate = 1.0
steps_per_round = 1
"""


def test_report_from_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ledger(tmp_path / "node.ledger", 20)
    (tmp_path / "node.toml").write_text(CONFIG)
    assert main(["privacy", "report", "--config", str(tmp_path / "node.toml"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["releases"] == 20 and doc["last_round"] == 19
    pld = doc["accountants"]["pld"]
    assert pld["epsilon_spent"] == pytest.approx(epsilon_for(5.0, 1e-5, 1.0, 20, "pld"))
    assert pld["budget_left"] == pytest.approx(8.0 - pld["epsilon_spent"])
    rounds = pld["rounds_left"]
    assert (
        epsilon_for(5.0, 1e-5, 1.0, 20 + rounds, "pld")
        <= 8.0
        < epsilon_for(5.0, 1e-5, 1.0, 21 + rounds, "pld")
    )
    assert doc["accountants"]["rdp"]["epsilon_spent"] > pld["epsilon_spent"]


def test_report_from_flags_text_works_beside_a_running_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "l"
    _ledger(path, 3)
    with PrivacyLedger(path, 8.0, 1e-5):  # the node holds the lock; the report only reads
        assert (
            main(["privacy", "report", "--ledger", str(path), "--budget", "8", "--delta", "1e-5"])
            == 0
        )
    out = capsys.readouterr().out
    assert "3 release(s)" in out and "pld (governs)" in out and "rounds left" in out


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["privacy", "report", "--ledger", str(tmp_path / "x"), "--budget", "8"]) == 2
    assert "give --config FILE" in capsys.readouterr().err
    assert (
        main(
            [
                "privacy",
                "report",
                "--ledger",
                str(tmp_path / "x"),
                "--budget",
                "8",
                "--delta",
                "1e-5",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("delta = 1e-5", "delta = 2.0"))
    assert main(["privacy", "report", "--config", str(bad)]) == 2
    assert "[privacy] delta must be in (0, 1), not 2.0" in capsys.readouterr().err


def test_config_table_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "epsilon = 1.0": "[privacy] epsilon is not a known setting",
        'mode = "central"': "[privacy] mode must be one of",
        "clip_norm = 0": "[privacy] clip_norm must be positive",
        'accountant = "gdp"': "[privacy] accountant must be one of",
    }
    for line, message in cases.items():
        (tmp_path / "c.toml").write_text(f'[node]\nname = "x"\n[privacy]\n{line}\n')
        assert main(["privacy", "report", "--config", str(tmp_path / "c.toml")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "c.toml").write_text('[node]\nname = "x"\n')  # the daemon's defaults
    assert main(["privacy", "report", "--config", str(tmp_path / "c.toml")]) == 2
    assert "state/privacy.ledger" in capsys.readouterr().err  # no ledger there yet


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["privacy", "plan", "--epsilon", "3", "--delta", "1e-5", "--rounds", "100", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    sigma = doc["noise_multiplier"]
    assert sigma["pld"] < sigma["rdp"]
    assert doc["recommended"] == {"accountant": "pld", "noise_multiplier": sigma["pld"]}
    assert doc["epsilon_after_rounds"]["pld"] <= 3.0
    assert doc["epsilon_after_rounds"]["rdp"] > 3.0  # RDP would not allow the PLD σ
    # q = 1: the plan is exactly the Gaussian with σ/√R
    assert gaussian_epsilon(sigma["pld"] / 10, 1e-5) == pytest.approx(
        doc["epsilon_after_rounds"]["pld"]
    )


def test_plan_text_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["privacy", "plan", "--epsilon", "2", "--delta", "1e-5", "--rounds", "10"]
    assert main([*args, "--sample-rate", "0.05", "--steps-per-round", "20"]) == 0
    out = capsys.readouterr().out
    assert "noise multiplier needed (pld)" in out and "ε after 10 rounds" in out
    assert main(["privacy", "plan", "--epsilon", "-1", "--delta", "1e-5", "--rounds", "10"]) == 2
    assert "ε (epsilon) must be > 0" in capsys.readouterr().err
    assert main([*args, "--sample-rate", "1.5"]) == 2
    assert "q must lie in (0, 1]" in capsys.readouterr().err

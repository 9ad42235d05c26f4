"""`privacy plan --peers`, `privacy report --min-contributors`: ε vs outsiders and vs c."""

import json
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.privacy import PrivacyLedger, Release, epsilon_for
from p2pfed.privacy.ddg import plan_ddg
from p2pfed.privacy.mechanisms import NoiseMode


def test_plan_shows_both_figures_and_the_ring(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["privacy", "plan", "--epsilon", "2", "--delta", "1e-5", "--rounds", "10"]
    argv += ["--peers", "5", "--collusion", "2", "--dimension", "1000", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    dd = doc["distributed"]
    # The secagg floor for 5 members against 2 colluders: the quorum ⌊(5 + 2)/2⌋ + 1 = 4.
    assert dd["min_contributors"] == 4 and dd["collusion"] == 2 and dd["ring_bits"] == 32
    assert dd["accountant"] == "rdp"
    assert dd["noise_multiplier"] == doc["noise_multiplier"]["rdp"]
    assert dd["epsilon_against_insiders"] == pytest.approx(2.0, abs=0.01)
    assert dd["epsilon_against_outsiders"] < dd["epsilon_against_insiders"]
    plan = plan_ddg(
        n_peers=5,
        min_contributors=4,
        collusion=2,
        dimension=1000,
        clip_norm=1.0,
        noise_multiplier=dd["noise_multiplier"],
    )
    assert dd["local_variance"] == int(plan.local_variance)
    assert plan.epsilon(1e-5, 10) == pytest.approx(dd["epsilon_against_insiders"], rel=1e-6)


def test_plan_refuses_an_impossible_collusion(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["privacy", "plan", "--epsilon", "2", "--delta", "1e-5", "--rounds", "10"]
    assert main([*argv, "--peers", "3", "--collusion", "2", "--dimension", "10"]) == 2
    assert "threshold 2 is not above the collusion bound 2" in capsys.readouterr().err


def test_report_shows_the_outsider_figure_below_the_charged_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, 10.0, 1e-5) as ledger:
        for r in range(4):
            ledger.reserve(Release(r, 3.0, 1.0, 1, 1.0, NoiseMode.DISTRIBUTED))
    argv = ["privacy", "report", "--ledger", str(path), "--budget", "10", "--delta", "1e-5"]
    assert main([*argv, "--min-contributors", "3", "--collusion", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pld = doc["accountants"]["pld"]
    assert doc["epsilon_holds_against"] == "1 colluding member(s)"
    assert pld["epsilon_spent"] == pytest.approx(epsilon_for(3.0, 1e-5, 1.0, 4, "pld"))
    # outsiders see all 3 shares: σ scaled by √(3/2)
    assert pld["epsilon_against_outsiders"] == pytest.approx(
        epsilon_for(3.0 * 1.5**0.5, 1e-5, 1.0, 4, "pld")
    )
    assert main([*argv, "--min-contributors", "3", "--collusion", "1"]) == 0
    assert "against outsiders (all 3 noise shares)" in capsys.readouterr().out

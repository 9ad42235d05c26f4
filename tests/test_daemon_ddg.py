"""The daemon refuses, before any network use, a collusion bound the noise cannot survive."""

from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.daemon import prepare
from p2pfed.demo import DemoSettings, build_consortium


@pytest.fixture
def member(tmp_path: Path) -> Path:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    return c.hospitals[0].config


def test_collusion_at_or_above_the_threshold_is_refused_at_start(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = member.read_text().replace('mode = "dp-sgd"', 'mode = "distributed"')
    assert "[secagg]" in text
    member.write_text(text.replace("[secagg]", "[secagg]\ncollusion = 2"))
    assert main(["run", "--config", str(member)]) == 2
    err = capsys.readouterr().err
    assert "[secagg] with 3 members: threshold 2 is not above the collusion bound 2" in err
    assert err.count("\n") == 1
    member.write_text(text.replace("[secagg]", "[secagg]\ncollusion = 1"))
    assert prepare(load_config(member)).config.secagg.collusion == 1
    member.write_text(text.replace("[secagg]", "[secagg]\ncollusion = 0"))
    assert main(["run", "--config", str(member)]) == 2
    assert "[secagg] collusion" in capsys.readouterr().err


def test_distributed_releases_are_governed_by_the_rdp_accountant(member: Path) -> None:
    # The discrete sum is bounded in zCDP; only RDP composes that bound exactly.
    text = member.read_text()
    assert load_config(member).accountant == load_config(member).privacy.accountant
    member.write_text(text.replace('mode = "dp-sgd"', 'mode = "distributed"'))
    config = load_config(member)
    assert config.privacy.accountant == "pld" and config.accountant == "rdp"

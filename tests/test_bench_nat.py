"""``p2pfed bench nat`` refuses, in one sentence, what it cannot run; the run itself is
measured by hand (docs/benchmarks.md, *NAT*) and its machinery is tests/netns's."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfed.bench import nat
from p2pfed.bench._netns import harness
from p2pfed.bench.round import model_words
from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.demo import DemoSettings, build_consortium


def test_without_root_or_nft_it_says_why_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "network-namespace tests need the 'nft' command (apt-get install nftables)"
    monkeypatch.setattr(harness, "skip_reason", lambda: reason)
    assert main(["bench", "nat", "--rounds", "2", "--peers", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "bench nat cannot run here" in lines[0] and "'nft'" in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--peers", "2"], "--peers"),
        (["--mbit", "0"], "--mbit"),
        (["--rounds", "1"], "--rounds"),
        (["--params", "10"], "--params"),
    ],
)
def test_bad_settings_are_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "nat", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_params_give_every_member_an_mlp_of_that_size_by_reference_privacy_off(
    tmp_path: Path,
) -> None:
    demo = build_consortium(tmp_path, DemoSettings(peers=3, rounds=2))
    nat._sized(demo, 1e5)
    for h in demo.hospitals:
        config = load_config(h.config)  # the daemon's own checks pass
        assert config.model.factory == "p2pfed.training.sized:mlp"
        assert dict(config.model.args) == {"n_features": 30, "params": 100_000}
        assert config.privacy.mode == "off" and config.secagg.enabled
    assert 99_000 <= model_words("mlp", 1e5) <= 101_000  # the words the bound is computed from

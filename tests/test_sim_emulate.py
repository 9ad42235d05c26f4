"""Emulation: a scenario on real daemons over libp2p, compared with the simulator."""

import csv
from pathlib import Path

import pytest

from p2pfed.cli import main

SCENARIO = """
name = "emu"
seed = 3
n = 3
rounds = 3

[data]
name = "breast_cancer"

[partition]
scheme = "iid"

[model]
name = "logreg"

[algorithm]
name = "{algorithm}"

[training]
lr = 0.1
local_steps = 3
batch_size = 16
"""


def scenario(tmp_path: Path, algorithm: str = "fedavg", extra: str = "") -> Path:
    p = tmp_path / "emu.toml"
    p.write_text(SCENARIO.format(algorithm=algorithm) + extra)
    return p


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_emulation_reports_the_simulators_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # a relative --out: the daemons run from other folders
    assert main(["sim", "emulate", str(scenario(tmp_path)), "--out", "out"]) == 0
    simulated = list(csv.DictReader((out / "metrics-simulated.csv").read_text().splitlines()))
    emulated = list(csv.DictReader((out / "metrics-emulated.csv").read_text().splitlines()))
    assert list(simulated[0]) == list(emulated[0])  # the same columns
    assert [int(r["round"]) for r in emulated] == [1, 2, 3]
    for row in emulated:
        assert float(row["consensus_distance"]) == pytest.approx(0.0, abs=1e-6)  # ring: one model
        assert int(row["active_peers"]) == 3
        assert float(row["bytes_sent_mean"]) > 0
    # Same data, partition and hyper-parameters: the real run lands near the simulated one.
    final_sim = float(simulated[-1]["accuracy_mean"])
    final_real = float(emulated[-1]["accuracy_mean"])
    assert abs(final_sim - final_real) < 0.08
    assert "real acc" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("algorithm", "extra", "match"),
    [
        ("gossip", "", "cannot be emulated"),
        ("fedavg", "\n[faults]\ndropout = 0.1\n", "faults"),
        ("fedavg", "\n[selection]\nfraction = 0.5\n", "[selection] cannot be emulated"),
        ("fedavg", "\n[privacy]\nenabled = true\n", "weighting = examples with [privacy]"),
    ],
)
def test_what_cannot_be_emulated_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str, extra: str, match: str
) -> None:
    assert main(["sim", "emulate", str(scenario(tmp_path, algorithm, extra))]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_too_many_peers_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path)
    p.write_text(p.read_text().replace("n = 3", "n = 12"))
    assert main(["sim", "emulate", str(p)]) == 2
    assert "3..8 real peers" in capsys.readouterr().err


def test_a_model_factory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path)
    p.write_text(
        p.read_text().replace('name = "logreg"', 'name = "logreg"\nfactory = "torch.nn:Linear"')
    )
    assert main(["sim", "emulate", str(p)]) == 2
    assert "[model] factory cannot be emulated" in capsys.readouterr().err

"""``p2pfed run`` checks its config before torch, trio or libp2p load.

An operator's typo or a missing file must be refused at once, in one sentence; what made the
refusal slow was importing torch and libp2p before the config was read, so that is what is
checked here (a time limit would only measure the machine's load).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "libp2p", "trio", "scipy"}

_PROBE = """
import contextlib, io, json, sys
from p2pfed.cli import main
with contextlib.redirect_stderr(io.StringIO()) as err:
    rc = main(["run", "--config", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
print(json.dumps({"rc": rc, "heavy": heavy, "err": err.getvalue()}))
"""


def refuse(config: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(config), *HEAVY],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    probe: dict[str, object] = json.loads(done.stdout)
    return probe


def test_a_missing_config_is_refused_before_anything_heavy_loads(tmp_path: Path) -> None:
    probe = refuse(tmp_path / "config.toml")
    assert probe["rc"] == 2 and probe["heavy"] == []
    assert f"config file {tmp_path / 'config.toml'} does not exist" in str(probe["err"])


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('[node]\nname = "a"\nstate_dri = "st"\n', "[node] state_dri is not a known setting"),
        ('[node]\nname = "a"\n[rounds]\nrounds = 0\n', "[rounds] rounds must be ≥ 1"),
        ('[node]\nname = "a"\n[privacy]\naccountant = "x"\n', "[privacy] accountant"),
        ('[node]\nname = "a"\n[training]\noptimizer = "x"\n', "[training] optimizer"),
    ],
)
def test_a_bad_key_is_refused_without_torch_or_libp2p(
    tmp_path: Path, table: str, named: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(table)
    probe = refuse(config)
    assert probe["rc"] == 2 and named in str(probe["err"])
    assert not {"torch", "libp2p"} & set(probe["heavy"])  # type: ignore[arg-type]

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfed.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_acceptance_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    ring = run_json(capsys, "topology", "analyze", "ring", "--n", "64", "--json")
    assert abs(ring["spectral_gap"] - (2 / 3) * (1 - math.cos(2 * math.pi / 64))) < 1e-9
    exp = run_json(capsys, "topology", "analyze", "exponential", "--n", "256", "--json")
    assert abs(exp["spectral_gap"] - 2 / 9) < 1e-9
    cube = run_json(capsys, "topology", "analyze", "hypercube", "--n", "64", "--json")
    assert abs(cube["spectral_gap"] - 2 / 7) < 1e-9
    for key in ["name", "n", "spectral_gap", "rho", "rounds_to_1e-3", "degree_max", "diameter"]:
        assert key in cube


def test_params_plot_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "r.png"
    out = run_json(
        capsys,
        "topology",
        "analyze",
        "regular",
        "--n",
        "20",
        "--param",
        "degree=6",
        "--seed",
        "3",
        "--json",
        "--plot",
        str(png),
    )
    assert out["degree_max"] == 6 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["topology", "analyze", "torus", "--n", "16"]) == 0
    assert "spectral_gap" in capsys.readouterr().out
    assert main(["topology", "list", "--n", "16"]) == 0
    listing = capsys.readouterr().out
    assert "one_peer_exponential" in listing and "hypercube" in listing


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(capsys, "topology", "list", "--n", "16", "--json")
    names = {r["name"] for r in rows}
    assert {"ring", "regions", "small_world"} <= names


def test_analyze_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "consortium.txt"
    p.write_text("a b\nb c\nc a\n")
    out = run_json(capsys, "topology", "analyze", str(p), "--json")
    assert out["n"] == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["topology", "analyze", "hypercube", "--n", "60"], "power of two"),
        (["topology", "analyze", "ring"], "needs --n"),
        (["topology", "analyze", "donut", "--n", "4"], "unknown topology 'donut'"),
        (["topology", "analyze", "ring", "--n", "8", "--param", "x"], "KEY=VALUE"),
        (["topology", "analyze", "ring", "--n", "8", "--param", "k=1"], "no parameter 'k'"),
        (["topology", "analyze", "missing.json"], "no such file"),
    ],
)
def test_errors_are_one_sentence(
    capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


_HELP_PROBE = """
import contextlib, io, json, sys
from p2pfed.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main(["--help"])
print(json.dumps({"help": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def test_command_line_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "p2pfed", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.startswith("p2pfed ")
    # Every command's options are registered for --help, so every invocation imports each
    # command's module; one that loaded the simulator at its top loaded torch for all of them
    # (4 s of CPU per `p2pfed --version`). What a fresh process imported is checked.
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True, check=True
    )
    *_, line = proc.stdout.splitlines()
    probe = json.loads(line)
    assert "topology" in probe["help"] and "bench" in probe["help"]
    assert {"p2pfed.bench.ddp", "p2pfed.bench.sim"} <= set(probe["modules"])
    assert not {m.split(".")[0] for m in probe["modules"]} & {"torch", "sim"}

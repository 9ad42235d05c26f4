"""Every documented operator failure, through the ``p2pfed`` command: one sentence, no trace.

Each case breaks one thing in a copy of a demo member's institution folder (built once per
module) and runs the command an operator would (``p2pfed run --config config.toml``): the
process must exit with the documented status and print exactly one line on stderr,
``p2pfed: error: …``, naming what is wrong, with no traceback and no exception group. The cases
are the list in docs/deployment.md, *Errors*.

A fresh ``python -m p2pfed run`` spends 2–10 s importing torch before its first check, so only
the cases marked ``fresh`` start one; the others run ``python -m p2pfed`` (``runpy``, as the
interpreter does) in a child forked from this already-warm test process, with its own stdout,
stderr and exit status, and an uncaught exception printed by ``sys.excepthook`` as the
interpreter would. The module takes about 30 s on a loaded 2-core machine.
"""

from __future__ import annotations

import csv
import importlib
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.identity import Identity, Roster, RosterGate

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60


@dataclass(frozen=True)
class Case:
    """One broken installation: what to break, the command, and what stderr must name."""

    break_it: Callable[[Path], object]
    names: str
    """A regular expression the one stderr line must match (what was wrong, and where)."""
    argv: tuple[str, ...] = ("run", "--config", "config.toml")
    status: int = 2
    fresh: bool = False
    """Run in a new interpreter (``python -m p2pfed``) rather than a warm forked child."""


def _edit(old: str, new: str) -> Callable[[Path], None]:
    """Replace the first line of config.toml matching ``old``."""

    def edit(folder: Path) -> None:
        config = folder / "config.toml"
        text = config.read_text()
        assert re.search(old, text, flags=re.MULTILINE), old
        config.write_text(re.sub(old, new, text, count=1, flags=re.MULTILINE))

    return edit


def _rewrite_csv(change: Callable[[list[list[str]]], list[list[str]]]) -> Callable[[Path], None]:
    def rewrite(folder: Path) -> None:
        path = folder / "patients.csv"
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(change(rows))

    return rewrite


def _drop_column(rows: list[list[str]]) -> list[list[str]]:
    return [row[:2] + row[3:] for row in rows]  # "mean perimeter"


def _blank_a_third(rows: list[list[str]]) -> list[list[str]]:
    return [rows[0]] + [["", *r[1:]] if i % 3 == 0 else r for i, r in enumerate(rows[1:])]


def _foreign_roster(folder: Path) -> None:
    """Version 2 of the roster, signed by a key that is not one of version 1's admins."""
    roster = Roster.load(folder / "roster.json")
    roster.with_expiry(roster.expires_at).signed_by(Identity.generate()).save(
        folder / "roster.json"
    )


def _tampered_roster(folder: Path) -> None:
    path = folder / "roster.json"
    path.write_text(path.read_text().replace("hospital-b", "hospital-x"))


def _hold_port(folder: Path) -> socket.socket:
    port = int(re.findall(r"/tcp/(\d+)", (folder / "config.toml").read_text())[0])
    held = socket.socket()
    held.bind(("127.0.0.1", port))
    held.listen()
    return held


def _write(name: str, data: bytes, mode: int = 0o600) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_bytes(data)
        (folder / name).chmod(mode)

    return write


def _unsigned_protocol(folder: Path) -> None:
    config = folder / "config.toml"
    argv = ["protocol", "init", str(folder / "protocol.json"), "--consortium", "demo-consortium"]
    assert main([*argv, "--config", str(config), "--from-data", str(folder / "patients.csv")]) == 0
    config.write_text(config.read_text() + '\n[study]\nprotocol = "protocol.json"\n')


CASES = {
    "unknown config key": Case(
        _edit(r"^\[rounds\]$", "[rounds]\nround = 3"),
        r"\[rounds\] round is not a known",
        fresh=True,
    ),
    "bad config value": Case(_edit(r"^rounds = 2$", "rounds = 0"), r"\[rounds\] rounds"),
    "missing config file": Case(
        lambda _: None, r"nowhere\.toml", ("run", "--config", "nowhere.toml")
    ),
    "key file readable by others": Case(
        lambda f: (f / "identity.key").chmod(0o644),
        r"permissions 0644 for key file \S*identity\.key are too open",
    ),
    "wrong key file": Case(_write("identity.key", b"not a key"), r"identity\.key"),
    "key of a non-member": Case(
        lambda f: Identity.generate().save(f / "identity.key", overwrite=True),
        r"not a member of roster version 1",
    ),
    "roster signed by an unknown key": Case(_foreign_roster, r"roster"),
    "roster edited after signing": Case(_tampered_roster, r"roster"),
    "unsigned study protocol": Case(_unsigned_protocol, r"protocol"),
    "model factory that cannot be imported": Case(  # fails inside trio: an exception group
        _edit(r'^kind = "logistic"$', 'kind = "nosuch_module:make"'),
        r"model\.kind 'nosuch_module:make' cannot be imported",
    ),
    "port in use": Case(
        _hold_port, r"\[network\] listen: cannot listen on 127\.0\.0\.1 port", fresh=True
    ),
    "missing data file": Case(lambda f: (f / "patients.csv").unlink(), r"patients\.csv"),
    "missing column": Case(_rewrite_csv(_drop_column), r"mean perimeter"),
    "missing values beyond the limit": Case(_rewrite_csv(_blank_a_third), r"mean radius.*missing"),
    "rounds that cannot fit the budget": Case(
        _edit(r"^epsilon_budget = .*$", "epsilon_budget = 0.5"),
        r"the 2 rounds still to run at σ = 2 need more than the ε 0\.5 left .*: raise σ",
    ),
    "corrupted ledger": Case(_write("state/privacy.ledger", b"garbage\n"), r"privacy\.ledger"),
    "corrupted roster state": Case(_write("state/roster-state.json", b"{"), r"roster-state\.json"),
    "unreadable status file": Case(
        _write("state/status.json", b"{"),
        r"status\.json",
        ("status", "--config", "config.toml"),
        fresh=True,
    ),
}


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo member's folder whose roster this node has already accepted once."""
    # What a forked child would otherwise import itself, on every case: import it once here.
    for module in ("p2pfed.cli.commands.run", "p2pfed.daemon", "libp2p", "dp_accounting"):
        importlib.import_module(module)
    root = tmp_path_factory.mktemp("consortium")
    folder = build_consortium(root / "c", DemoSettings(peers=3, rounds=2)).hospitals[0].folder
    (folder / "state").mkdir(mode=0o700)
    RosterGate.open(
        folder / "roster.json",
        state=folder / "state" / "roster-state.json",
        clock=lambda: datetime.now(UTC),
    )
    return folder


@pytest.fixture
def case_folder(member: Path, tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / member.name
    shutil.copytree(member, folder)
    yield folder


def _fresh(argv: tuple[str, ...], cwd: Path) -> tuple[int, str]:
    """``python -m p2pfed ARGV`` in a new interpreter: (exit status, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "p2pfed", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=TIMEOUT_S,
    )
    return done.returncode, done.stderr


def _forked(argv: tuple[str, ...], cwd: Path) -> tuple[int, str]:
    """``python -m p2pfed ARGV`` in a child of this process: (exit status, stderr)."""
    err_path = cwd / "stderr.txt"
    with err_path.open("wb") as err, open(os.devnull, "wb") as out:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            os._exit(_child(argv, cwd, out.fileno(), err.fileno()))
    deadline = time.monotonic() + TIMEOUT_S
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"p2pfed {' '.join(argv)} ran past {TIMEOUT_S} s (it went online?)")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(waited[1]), err_path.read_text()


def _child(argv: tuple[str, ...], cwd: Path, out: int, err: int) -> int:
    """The interpreter's part: run ``p2pfed.__main__``; an uncaught exception goes to stderr."""
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the child's streams until exit)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        warnings.resetwarnings()  # pytest's "error" filter is not the command's
        sys.argv = ["p2pfed", *argv]
        try:
            runpy.run_module("p2pfed", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what the interpreter prints for an uncaught error
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


@pytest.mark.parametrize("name", list(CASES))
def test_each_operator_failure_is_one_sentence(name: str, case_folder: Path) -> None:
    case = CASES[name]
    held = case.break_it(case_folder)
    try:
        status, stderr = (_fresh if case.fresh else _forked)(case.argv, case_folder)
    finally:
        if isinstance(held, socket.socket):
            held.close()
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("p2pfed: error: "), lines[0]
    assert re.search(case.names, lines[0]), lines[0]
    assert status == case.status, stderr

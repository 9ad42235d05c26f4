"""Issue #14's acceptance, walked as a new operator would: the real ``p2pfed`` CLI only.

Five hospitals in five folders with their own slices of one real table, three admins, a
roster and a study protocol each signed 2 of 3. Three sites are good (one has its columns
in another order); one lacks a column and one has missing values past the limit: those two
are refused before joining, one sentence each, exit status 2. A 5-member roster needs 4 in
every secure round (``(n + collusion) // 2 + 1``), so the admins remove the two refused
sites and re-sign; the good three, with the settings ``p2pfed init`` wrote, train all the
default rounds within the default budget. ``p2pfed status`` is checked before the start,
while waiting, after a SIGTERM, while training and at the end.

Slow: about 100 s of CPU (six daemon starts — five at once, each importing torch and
libp2p — and about 30 CLI processes; the 20 default rounds take about 2.3 s each). Wall
time on a 2-core machine: 76 s idle (load average 0.7), 260–280 s at load average 9–15.
The fast tests at the end check each piece on its own.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.consortium import free_ports, write_csv
from p2pfed.daemon import RoundReporter, prepare, read_status
from p2pfed.daemon.prepare import secagg_plan
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import DataError
from p2pfed.identity import StudyProtocol
from p2pfed.node.liveness import Waiting
from p2pfed.training import ParameterLayout
from p2pfed.training.data import Dataset, load_builtin
from tests.reporter_fakes import FakePeer, FakeTransport, demo_member
from tests.test_node import Consortium

GOOD = ("st-olav", "haukeland", "ulleval")
REORDERED, MISSING, NANS = "haukeland", "sorlandet", "nordland"
SITES = (*GOOD, MISSING, NANS)
ADMINS = ("admin-1.key", "admin-2.key", "admin-3.key")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def p2pfed(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One CLI command, run from the admins' folder as the guide shows it."""
    return subprocess.run(
        [sys.executable, "-m", "p2pfed", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=180,
    )


def ok(root: Path, *args: str) -> str:
    done = p2pfed(root, *args)
    assert done.returncode == 0, f"p2pfed {' '.join(args)}: {done.stderr}"
    return done.stdout


def ok_each(root: Path, *commands: list[str]) -> list[str]:
    """Independent commands (different sites, or admins at their own desks) side by side."""
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "p2pfed", *args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for args in commands
    ]
    outs = []
    for args, process in zip(commands, running, strict=True):
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, f"p2pfed {' '.join(args)}: {err}"
        outs.append(out)
    return outs


def start(root: Path, site: str) -> subprocess.Popen[bytes]:
    """``p2pfed run --config SITE/config.toml``; stdout and stderr to SITE/daemon.log."""
    with (root / site / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "p2pfed", "run", "--config", f"{site}/config.toml"],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
        )


def status(root: Path, site: str) -> dict[str, Any]:
    """``p2pfed status --json`` (empty before the daemon's first write)."""
    done = p2pfed(root, "status", "--config", f"{site}/config.toml", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else {}


def wait_for(
    root: Path,
    what: str,
    check: Callable[[], bool],
    daemons: dict[str, subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    """Poll ``check`` until true; fail naming ``what`` and a daemon that died meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        for name, process in daemons.items():
            if process.poll() not in (None, 0):
                tail = (root / name / "daemon.log").read_text(errors="replace")[-1500:]
                pytest.fail(f"{name} exited {process.returncode} while waiting for {what}: {tail}")
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.3)


def write_sites(root: Path) -> str:
    """Each site's own rows of the breast-cancer table (``SITE.csv``, as exported by the
    hospital); returns the column the one site lacks."""
    table = load_builtin("breast_cancer")
    order = np.random.default_rng(14).permutation(len(table))
    for site, rows in zip(SITES, np.array_split(order, len(SITES)), strict=True):
        part = Dataset(table.x[rows], table.y[rows], table.feature_names, site)
        write_csv(root / f"{site}.csv", part)
    gone = table.feature_names[3]
    rewrite(root / f"{REORDERED}.csv", lambda row, _: row[::-1])
    rewrite(root / f"{MISSING}.csv", lambda row, _: row[:3] + row[4:])
    # 7 empty cells in one column: past the default limit of 0 % missing.
    rewrite(root / f"{NANS}.csv", lambda row, i: [*row[:5], "", *row[6:]] if 1 <= i <= 7 else row)
    return gone


def rewrite(path: Path, change: Callable[[list[str], int], list[str]]) -> None:
    with path.open(newline="") as fh:
        rows = [change(row, i) for i, row in enumerate(csv.reader(fh))]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def edit(path: Path, old: str, new: str) -> None:
    """The operator's edit of the ``config.toml`` that ``p2pfed init`` wrote."""
    text = path.read_text()
    assert old in text, f"{path} has no {old!r}"
    path.write_text(text.replace(old, new, 1))


def sign_roster(root: Path, *keys: str) -> None:
    for key in keys:
        ok(root, "roster", "sign", "roster.json", "--key", key)
    for site in SITES:  # distribute: the signatures make it authentic, not the channel
        shutil.copy(root / "roster.json", root / site / "roster.json")


@pytest.fixture
def daemons() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The daemons the test starts, by site; whatever still runs is stopped at the end."""
    running: dict[str, subprocess.Popen[bytes]] = {}
    yield running
    for process in running.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_new_operator_gets_five_sites_to_the_end_of_a_signed_study(
    tmp_path: Path, daemons: dict[str, subprocess.Popen[bytes]]
) -> None:
    root = tmp_path
    gone = write_sites(root)
    ports = dict(zip(SITES, free_ports(len(SITES)), strict=True))

    # 1. Keys: three admins (offline in real life) and each site's own, made by `init`.
    for printed in ok_each(root, *[["keygen", key] for key in ADMINS]):
        assert printed.startswith("12D3KooW")
    ok(root, "roster", "init", "roster.json", "--consortium", "eu-cardio",
       *[flag for key in ADMINS for flag in ("--admin-key", key)],
       "--threshold", "2", "--valid-days", "30")  # fmt: skip
    inits = ok_each(root, *[["init", site, "--name", site] for site in SITES])
    for site, printed in zip(SITES, inits, strict=True):
        shutil.move(root / f"{site}.csv", root / site / "patients.csv")
        peer_id = re.search(r"peer ID (12D3KooW\w+)", printed)
        assert peer_id is not None, printed
        # 2. Roster: the admins add each site with the peer ID and address it sent them.
        ok(root, "roster", "add", "roster.json", "--name", site, "--peer-id", peer_id[1],
           "--address", f"/ip4/127.0.0.1/tcp/{ports[site]}")  # fmt: skip
    sign_roster(root, "admin-1.key", "admin-3.key")

    # 3. Protocol: features and normalisation from one site's table, settings from `init`'s.
    shown = ok(root, "protocol", "init", "protocol.json", "--consortium", "eu-cardio",
               "--config", "st-olav/config.toml", "--from-data", "st-olav/patients.csv",
               "--normalise-from", "st-olav/patients.csv")  # fmt: skip
    assert "30 features, unsigned (centers and scales from st-olav/patients.csv" in shown
    unsigned = p2pfed(root, "protocol", "show", "protocol.json", "--roster", "roster.json")
    assert unsigned.returncode == 2 and unsigned.stderr.count("\n") == 1
    for key in ("admin-1.key", "admin-2.key"):
        ok(root, "protocol", "sign", "protocol.json", "--key", key, "--roster", "roster.json")
    shown = ok(root, "protocol", "show", "protocol.json", "--roster", "roster.json", "--json")
    document = json.loads(shown)
    assert document["valid"] is True
    assert document["status"] == "signed by 2 of 3 admins (threshold 2)"
    assert abs(document["protocol"]["features"][0]["center"] - 14.1) < 1.5  # mean radius, mm

    # 4. Each site: its address, its data file and the protocol, in its own config.toml.
    for site in SITES:
        shutil.copy(root / "protocol.json", root / site / "protocol.json")
        config = root / site / "config.toml"
        edit(config, '"/ip4/0.0.0.0/tcp/4001"', f'"/ip4/127.0.0.1/tcp/{ports[site]}"')
        edit(config, 'builtin = "breast_cancer"', 'path = "patients.csv"')
        edit(config, 'protocol = ""', 'protocol = "protocol.json"')
    before = p2pfed(root, "status", "--config", "st-olav/config.toml")
    assert before.returncode == 1 and "st-olav: no status yet" in before.stdout
    defaults = load_config(root / "st-olav" / "config.toml")
    rounds, budget = defaults.rounds.rounds, defaults.privacy.epsilon_budget

    # 5. Everyone starts. The two bad sites are refused before joining: one sentence each.
    daemons.update({site: start(root, site) for site in SITES})
    for site, sentence in (
        (MISSING, f"p2pfed: error: {root / MISSING / 'patients.csv'}: no feature column "
                  f"{gone!r} in the header"),
        (NANS, "p2pfed: error: patients.csv failed data validation (missing_values: worst "
               "feature 'mean compactness' has 7 of "),
    ):  # fmt: skip
        assert daemons.pop(site).wait(timeout=240) == 2
        lines = (root / site / "daemon.log").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(sentence), lines
        assert "Traceback" not in lines[0]
        assert not (root / site / "state" / "audit.jsonl").exists()  # no start recorded
        shown = p2pfed(root, "status", "--config", f"{site}/config.toml").stdout
        assert shown == f"{site}: no status yet (the daemon has not started here)\n", shown

    # 6. The good three wait for the others, and their status says for whom.
    def waiting_for_the_refused() -> bool:
        s = status(root, "st-olav")
        members = s.get("members", {})
        return (
            s.get("state") == "running"
            and sorted(s.get("waiting", {}).get("missing", [])) == sorted((NANS, MISSING))
            and members.get("haukeland", {}).get("connected") is True
            and members.get("ulleval", {}).get("connected") is True
        )

    wait_for(root, "st-olav waiting for the refused two", waiting_for_the_refused, daemons, 150)
    waiting = status(root, "st-olav")
    assert waiting["completed_round"] == -1 and waiting["running"] is True
    text = ok(root, "status", "--config", "st-olav/config.toml")
    missing = ", ".join(waiting["waiting"]["missing"])
    assert re.search(rf"waiting +round 0 for {missing}: start-up: 3 of 5 answer", text), text
    assert re.search(r"rounds done +0 of", text) and "stopped because" not in text, text

    # 7. SIGTERM one running daemon: status says stopped, why, and that its pid is gone.
    daemons["ulleval"].send_signal(signal.SIGTERM)
    assert daemons["ulleval"].wait(timeout=60) == 0
    stopped = status(root, "ulleval")
    assert stopped["state"] == "stopped" and stopped["running"] is False
    assert stopped["stop_reason"] == "signal SIGTERM"
    text = ok(root, "status", "--config", "ulleval/config.toml")
    assert re.search(r"state +stopped, not running", text), text
    assert re.search(rf"daemon pid +{stopped['pid']} \(not running\)", text), text
    assert re.search(r"stopped because +signal SIGTERM", text), text
    daemons["ulleval"] = start(root, "ulleval")  # it resumes; the roster below reaches it live

    # 8. Four of five can never meet the secure quorum: the admins remove the refused two,
    # re-sign and distribute; the running members take the new version live.
    for site in (MISSING, NANS):
        ok(root, "roster", "remove", "roster.json", site)
    sign_roster(root, "admin-2.key", "admin-3.key")
    still = ok(root, "protocol", "show", "protocol.json", "--roster", "roster.json")
    assert "signed by 2 of 3 admins" in still  # the admins, not the members, sign it

    # 9. While training: rounds done, both others connected, ε spent within the budget.
    def training() -> bool:
        return status(root, "st-olav").get("completed_round", -1) >= 1

    wait_for(root, "a committed round at st-olav", training, daemons, 240)
    mid = status(root, "st-olav")
    assert mid["state"] == "running" and mid["running"] is True and mid["rounds"] == rounds
    assert mid["connected_peers"] == 2 and "waiting" not in mid
    assert {m: row["connected"] for m, row in mid["members"].items()} == {
        "haukeland": True,
        "ulleval": True,
    }
    assert 0 < mid["epsilon"] <= budget and mid["roster_version"] == 8
    text = ok(root, "status", "--config", "st-olav/config.toml")
    done = re.search(rf"rounds done +(\d+) of {rounds}\n", text)
    assert done is not None and int(done[1]) >= mid["completed_round"] + 1, text
    # the link's round trip once its first Yamux ping came back (0.5 s after connecting)
    reached = r"haukeland +connected \(direct, stream open \d+ ms(, round trip [\d.]+ ms)?\)"
    assert re.search(reached + r", last round \d+", text), text

    # 10. The end: every default round, within the budget, the same model everywhere.
    for site, process in daemons.items():
        assert process.wait(timeout=300) == 0, (root / site / "daemon.log").read_text()[-2000:]
    final = {site: status(root, site) for site in GOOD}
    texts = ok_each(root, *[["status", "--config", f"{site}/config.toml"] for site in GOOD])
    for (site, s), text in zip(final.items(), texts, strict=True):
        assert s["state"] == "finished" and s["running"] is False, (site, s)
        assert s["completed_round"] == rounds - 1 and 0 < s["epsilon"] <= budget
        assert re.search(rf"rounds done +{rounds} of {rounds}\n", text), text
        assert "stopped because" not in text and "waiting" not in text, text
    assert len({s["model_version"] for s in final.values()}) == 1
    assert len({s["epsilon"] for s in final.values()}) == 1  # one cohort, one accounting
    # The ledger itself (read without the daemon) holds every release, within the budget.
    spent = json.loads(ok(root, "privacy", "report", "--config", "st-olav/config.toml", "--json"))
    assert spent["releases"] == rounds and spent["budget_epsilon"] == budget
    governing = spent["accountants"][spent["governing_accountant"]]["epsilon_spent"]
    assert governing == pytest.approx(final["st-olav"]["epsilon"])


# The pieces of the path above, each on its own and fast.


def test_protocol_init_takes_centres_and_scales_from_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "pooled.csv"
    table.write_text("age,bp,flag,label\n50,120,1,0\n70,,1,1\n60,140,1,0\n")
    protocol = tmp_path / "protocol.json"
    args = ["protocol", "init", str(protocol), "--consortium", "cardio", "--from-data", str(table)]
    assert main([*args, "--normalise-from", str(table)]) == 0
    assert f"centers and scales from {table}; check them" in capsys.readouterr().out
    features = {f.name: f for f in StudyProtocol.load(protocol).features}
    assert features["age"].center == pytest.approx(60.0)
    assert features["age"].scale == pytest.approx(np.std([50, 70, 60]))
    assert features["bp"].center == pytest.approx(130.0)  # the empty cell is skipped
    assert features["bp"].scale == pytest.approx(10.0)
    assert (features["flag"].center, features["flag"].scale) == (1.0, 1.0)  # constant: scale 1
    # Without it the constants stay at 0 and 1 for the admins to set.
    assert main([*args, "--force"]) == 0
    assert {(f.center, f.scale) for f in StudyProtocol.load(protocol).features} == {(0.0, 1.0)}
    capsys.readouterr()
    (tmp_path / "short.csv").write_text("age,bp,flag,label\n50,,1,0\n")
    code = main([*args, "--force", "--normalise-from", str(tmp_path / "short.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "feature 'age' has fewer than 2 values to normalise from" in err


def test_a_site_past_the_missing_value_limit_is_refused_naming_column_and_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    config = c.hospitals[0].config
    data = config.parent / "patients.csv"
    column = data.read_text().splitlines()[0].split(",")[2]
    rewrite(data, lambda row, i: [*row[:2], "", *row[3:]] if 1 <= i <= 3 else row)
    rows = len(data.read_text().splitlines()) - 1
    with pytest.raises(DataError, match="missing_values"):  # before any network: fails fast
        prepare(load_config(config))
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"worst feature {column!r} has 3 of " in err and "this node will not join" in err
    assert rows > 3 and not (config.parent / "state" / "audit.jsonl").exists()


def test_status_says_why_a_daemon_stopped_and_whom_a_running_one_waits_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[node]\nname = "st-olav"\nstate_dir = "state"\n')
    (tmp_path / "state").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # its pid is free once reaped
    dead.wait()
    base = {"name": "st-olav", "completed_round": 4, "rounds": 20, "updated": time.time()}
    stopped = {**base, "state": "stopped", "pid": dead.pid, "stop_reason": "signal SIGTERM"}
    (tmp_path / "state" / "status.json").write_text(json.dumps(stopped))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"state +stopped, not running", out), out
    assert re.search(rf"daemon pid +{dead.pid} \(not running\)", out), out
    assert re.search(r"stopped because +signal SIGTERM\n", out), out
    waiting = {"round": 5, "reason": "start-up: 1 of 3 answer", "missing": ["haukeland"]}
    running = {**base, "state": "running", "pid": os.getpid(), "waiting": waiting}
    (tmp_path / "state" / "status.json").write_text(json.dumps(running))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"waiting +round 5 for haukeland: start-up: 1 of 3 answer\n", out), out
    assert "stopped because" not in out


async def test_the_start_up_wait_says_whom_it_waits_for_while_it_lasts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    c = Consortium(tmp_path, 3)
    waits: list[Waiting] = []
    async with c.peer(0) as peer:
        peer.on_wait = waits.append
        with trio.move_on_after(4.0):  # within the 5 s start-up wait for every member
            await peer.run(5, startup_timeout=5.0)
        assert peer.next_round == 0
    assert len(waits) >= 1, "the start-up wait was silent"
    assert {(w.round, w.reason, frozenset(w.missing)) for w in waits} == {
        (0, "start-up: 1 of 3 answer", frozenset(peer.others))
    }


def test_while_waiting_the_status_shows_who_is_connected_now(tmp_path: Path) -> None:
    """A member that came up after the start is shown connected while the wait goes on."""
    _, prepared, recorder = demo_member(tmp_path)
    others = [m for m in prepared.gate.roster.members if m.peer_id != prepared.identity.peer_id]
    status: dict[str, Any] = {}
    reporter = RoundReporter(prepared, status, recorder, None, ParameterLayout(("w",), ((2,),)))
    transport = FakeTransport(connected=())
    peer = FakePeer(np.zeros(2, np.float32))
    reporter.running(peer, transport, prepared.gate.roster.version)  # type: ignore[arg-type]
    assert not any(row["connected"] for row in status["members"].values())
    transport.connected = (others[0].peer_id,)  # it answered; the other is still down
    reporter.waiting(Waiting(0, "start-up: 2 of 3 answer", (others[1].peer_id,), 0.4))
    written = read_status(prepared.state_dir)
    recorder.stop(reason="finished")
    assert written is not None and written["connected_peers"] == 1
    assert {m: row["connected"] for m, row in written["members"].items()} == {
        others[0].name: True,
        others[1].name: False,
    }
    assert written["waiting"]["missing"] == [others[1].name]


def test_with_init_defaults_three_of_five_cannot_meet_a_secure_round_three_of_three_can(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why the guide has the admins remove the refused sites (section 0, step 7)."""
    assert main(["init", str(tmp_path / "site"), "--name", "site"]) == 0
    capsys.readouterr()
    config = load_config(tmp_path / "site" / "config.toml")
    five = secagg_plan(config, [f"m{i}" for i in range(5)])
    assert five.min_survivors == 4  # (5 + collusion 1) // 2 + 1
    assert secagg_plan(config, ["m0", "m1", "m2"]).min_survivors == 3

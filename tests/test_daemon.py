"""The daemon and its commands: init, run (input checks), status, and a SIGKILL recovery."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.consortium import launch, statuses, stop, watch
from p2pfed.daemon import prepare, read_status
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import ConfigError, DataError
from p2pfed.identity import Identity


def test_init_creates_an_institution_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "st-olav"
    assert main(["init", str(folder), "--name", "st-olav"]) == 0
    out = capsys.readouterr().out
    key = folder / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Identity.load(key).peer_id in out
    assert load_config(folder / "config.toml").node.name == "st-olav"
    assert main(["init", str(folder), "--name", "st-olav"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.fixture
def member(tmp_path: Path) -> Path:
    """A one-hospital copy of the demo consortium: config, key, roster and data."""
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    return c.hospitals[0].config


def run_error(capsys: pytest.CaptureFixture[str], config: Path) -> str:
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_prepare_accepts_a_good_member(member: Path) -> None:
    prepared = prepare(load_config(member))
    assert prepared.report.passed
    assert (prepared.state_dir / "validation.json").exists()


def test_run_refuses_bad_inputs_with_one_sentence(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = member.parent
    text = member.read_text()
    member.write_text(text.replace("[training]", "[training]\nlearnin_rate = 3"))
    assert "[training] learnin_rate is not a known setting" in run_error(capsys, member)

    member.write_text(text)
    (folder / "patients.csv").write_text("a,b,label\n1,x,0\n")
    assert "non-numeric 'x'" in run_error(capsys, member)

    rows = ["mean radius,label"] + [f"{v},1" for v in np.linspace(5, 25, 60)]
    (folder / "patients.csv").write_text("\n".join(rows) + "\n")
    err = run_error(capsys, member)
    assert "failed data validation" in err and "schema" in err and "will not join" in err

    (folder / "roster.json").write_text("{}")
    assert "roster" in run_error(capsys, member)

    os.chmod(folder / "identity.key", 0o644)
    assert "permissions" in run_error(capsys, member).lower()


def test_a_node_outside_the_roster_is_refused(member: Path) -> None:
    Identity.generate().save(member.parent / "identity.key", overwrite=True)
    with pytest.raises(ConfigError, match="not a member of roster version 1"):
        prepare(load_config(member))


def test_skewed_data_fails_validation(member: Path) -> None:
    folder = member.parent
    member.write_text(member.read_text().replace("max_label_skew = 0.65", "max_label_skew = 0.45"))
    lines = (folder / "patients.csv").read_text().splitlines()
    only_zeros = [lines[0]] + [line for line in lines[1:] if line.endswith(",0")] * 5
    (folder / "patients.csv").write_text("\n".join(only_zeros) + "\n")
    with pytest.raises(DataError, match="label_skew"):
        prepare(load_config(member))


def test_status_before_and_after(member: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(member)]) == 1
    assert "no status yet" in capsys.readouterr().out
    state = member.parent / "state"
    state.mkdir(exist_ok=True)
    (state / "status.json").write_text(
        json.dumps(
            {
                "name": "h",
                "state": "running",
                "completed_round": 3,
                "rounds": 10,
                "updated": time.time(),
                "model_digest": "ab" * 32,
                "connected_peers": 2,
            }
        )
    )
    assert main(["status", "--config", str(member), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["completed_round"] == 3 and shown["connected_peers"] == 2


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_one_of_four_daemons(tmp_path: Path) -> None:
    """Three daemons finish without the killed one; restarted, it resumes and catches up."""
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=4, rounds=8))
    victim = c.hospitals[1]
    try:
        launch(c)
        deadline = time.monotonic() + 180
        while (read_status(victim.state) or {}).get("completed_round", -1) < 1:
            assert time.monotonic() < deadline, "the consortium never completed round 1"
            assert all(h.process and h.process.poll() is None for h in c.hospitals)
            time.sleep(0.2)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = (read_status(victim.state) or {})["completed_round"]
        time.sleep(1.0)
        launch(c, [victim])
        final = watch(c, timeout=300)
    finally:
        stop(c)
    assert killed_at < 7
    assert [s["state"] for s in final] == ["finished"] * 4
    assert {s["completed_round"] for s in final} == {7}
    assert len({s["model_digest"] for s in final}) == 1
    log = (victim.folder / "daemon.log").read_text()
    assert "resumed from checkpoint" in log
    assert statuses(c)[1]["pid"] == victim.process.pid  # the restarted process finished


def test_target_epsilon_picks_a_sigma_that_meets_it(member: Path) -> None:
    from dataclasses import replace

    from p2pfed.daemon import noise_multiplier
    from p2pfed.privacy import PLDAccountant

    config = load_config(member)
    config = replace(config, privacy=replace(config.privacy, target_epsilon=3.0))
    sigma = noise_multiplier(config)
    steps = (
        config.rounds.rounds
        * config.training.local_epochs
        * int(np.ceil(1 / config.privacy.sample_rate))
    )
    acc = PLDAccountant()
    acc.step(noise_multiplier=sigma, sample_rate=config.privacy.sample_rate, steps=steps)
    assert acc.get_epsilon(config.privacy.delta) <= 3.0
    assert (
        noise_multiplier(load_config(member)) == load_config(member).privacy.noise_multiplier
    )


def test_bootstrap_entries_are_checked(member: Path) -> None:
    from dataclasses import replace

    from p2pfed.daemon import peer_addresses

    config = load_config(member)
    members = {m.peer_id: m for m in prepare(config).gate.roster.members}
    me, other = list(members)[:2]
    extra = f"/ip4/10.1.2.3/tcp/4001/p2p/{other}"
    cfg = replace(config, network=replace(config.network, bootstrap=(extra,)))
    assert "/ip4/10.1.2.3/tcp/4001" in peer_addresses(cfg, members, me)[other]
    for bad, match in [
        ("/ip4/10.1.2.3/tcp/4001", "must end in /p2p/"),
        ("/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWNotAMember", "not in the roster"),
    ]:
        cfg = replace(config, network=replace(config.network, bootstrap=(bad,)))
        with pytest.raises(ConfigError, match=match):
            peer_addresses(cfg, members, me)


def test_cross_table_and_roster_checks(member: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = member.read_text()
    member.write_text(
        text.replace('mode = "dp-sgd"', 'mode = "distributed"').replace(
            'mode = "ring"', 'mode = "gossip"'
        )
    )
    assert "[privacy] mode = distributed needs [rounds] mode = ring" in run_error(capsys, member)
    member.write_text(text.replace("[rounds]", "[rounds]\nmin_peers = 9"))
    assert "[rounds] min_peers = 9 exceeds the roster's 3 members" in run_error(capsys, member)


def test_a_spent_budget_refuses_to_start(member: Path) -> None:
    from p2pfed.errors import BudgetExceededError
    from p2pfed.privacy import PrivacyLedger, Release
    from p2pfed.privacy.mechanisms import NoiseMode

    config = load_config(member)
    (member.parent / "state").mkdir(exist_ok=True)
    with PrivacyLedger(config.path(config.privacy.ledger), 50.0, 1e-5) as ledger:
        for r in range(40):
            try:
                ledger.reserve(Release(r, 0.3, 1.0, 1, 1.0, NoiseMode.LOCAL))
            except BudgetExceededError:
                break
    tight = member.read_text().replace("epsilon_budget = 50.0", "epsilon_budget = 1.0")
    member.write_text(tight)
    with pytest.raises(BudgetExceededError, match="is spent"):
        prepare(load_config(member))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_documented_onboarding_runs_with_default_configs(tmp_path: Path) -> None:
    """init ×3, roster init/add/sign, then `p2pfed run` on the commented default config."""
    import re
    import subprocess
    import sys

    from p2pfed.consortium import free_ports

    def cli(*argv: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "p2pfed", *argv], capture_output=True, text=True, check=True
        )
        return out.stdout

    roster = tmp_path / "roster.json"
    cli("keygen", str(tmp_path / "admin.key"))
    cli(
        "roster",
        "init",
        str(roster),
        "--consortium",
        "nordic",
        "--admin-key",
        str(tmp_path / "admin.key"),
    )
    names, ports = ["oslo", "bergen", "tromso"], free_ports(3)
    for name, port in zip(names, ports, strict=True):
        peer_id = re.search(r"peer ID (\S+)\)", cli("init", str(tmp_path / name), "--name", name))
        assert peer_id is not None
        cli(
            "roster",
            "add",
            str(roster),
            "--name",
            name,
            "--peer-id",
            peer_id.group(1),
            "--address",
            f"/ip4/127.0.0.1/tcp/{port}",
        )
    cli("roster", "sign", str(roster), "--key", str(tmp_path / "admin.key"))
    procs = []
    for name, port in zip(names, ports, strict=True):
        folder = tmp_path / name
        (folder / "roster.json").write_bytes(roster.read_bytes())
        config = (folder / "config.toml").read_text()
        config = config.replace("/ip4/0.0.0.0/tcp/4001", f"/ip4/127.0.0.1/tcp/{port}")
        (folder / "config.toml").write_text(config.replace("rounds = 20", "rounds = 2"))
        log = (folder / "daemon.log").open("wb")
        procs.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "p2pfed",
                        "run",
                        "--config",
                        str(folder / "config.toml"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    try:
        for proc, _ in procs:
            assert proc.wait(timeout=240) == 0
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    finals = [read_status(tmp_path / name / "state") or {} for name in names]
    assert [s["state"] for s in finals] == ["finished"] * 3
    assert {s["completed_round"] for s in finals} == {1}
    assert len({s["model_digest"] for s in finals}) == 1
    assert all(0 < s["epsilon"] < 10 for s in finals)  # distributed DP, one release a round


def test_a_port_in_use_is_one_sentence_from_the_real_process(member: Path) -> None:
    """Another process holds the listen port: `p2pfed run` says so in one line, no traceback."""
    import re
    import socket
    import subprocess
    import sys

    config = load_config(member)
    port = int(config.network.listen.rsplit("/", 1)[1])
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run(
            [sys.executable, "-m", "p2pfed", "run", "--config", str(member)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(rf"cannot listen on 127\.0\.0\.1 port {port} \(.*in use", lines[0])
    # Refused in prepare: no start was recorded in the audit log.
    audit = member.parent / "state" / "audit.jsonl"
    assert not audit.exists() or "daemon_start" not in audit.read_text()


def test_errors_inside_an_exception_group_are_printed_as_their_sentences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trio

    from p2pfed.cli import _sentences

    group = BaseExceptionGroup(
        "task failed",
        [
            ConfigError("[network] listen: cannot listen"),
            BaseExceptionGroup(
                "inner", [DataError("bad rows"), ConfigError("[network] listen: cannot listen")]
            ),
        ],
    )
    assert _sentences(group) == ["[network] listen: cannot listen", "bad rows"]
    assert _sentences(BaseExceptionGroup("x", [ConfigError("a"), RuntimeError("bug")])) is None
    cancelled = trio.Cancelled._create()  # a sibling task cancelled by the failure
    assert _sentences(BaseExceptionGroup("x", [ConfigError("a"), cancelled])) == ["a"]


def test_rounds_that_cannot_fit_the_budget_left_are_refused_at_start(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger has room for fewer rounds than the config still wants: one sentence, no start."""
    from p2pfed.privacy import NoiseMode, PrivacyLedger
    from p2pfed.privacy.ledger import Release

    text = member.read_text()
    member.write_text(text.replace("rounds = 1\n", "rounds = 1000\n", 1))
    config = load_config(member)
    assert config.rounds.rounds == 1000 and config.privacy.mode == "dp-sgd"
    ledger_path = config.path(config.privacy.ledger)
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    with PrivacyLedger(
        ledger_path, config.privacy.epsilon_budget, config.privacy.delta, config.accountant
    ) as ledger:
        # Spend most of the budget with a few loud releases.
        while ledger.remaining_epsilon() > 0.05 * config.privacy.epsilon_budget:
            ledger.reserve(Release(0, 0.8, 1.0, 1, 1.0, NoiseMode.DP_SGD))
    err = run_error(capsys, member)
    assert "the 1000 rounds still to run" in err and "lower [rounds] rounds to" in err
    # With as many rounds as fit, the node starts.
    fits = int(err.split("lower [rounds] rounds to ")[1].split(",")[0])
    assert 0 < fits < 1000
    member.write_text(text.replace("rounds = 1\n", f"rounds = {fits}\n", 1))
    prepare(load_config(member))


def test_a_finished_node_says_so_and_exits_at_once(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_privacy_anchoring import run_rounds

    config = load_config(member)
    assert config.rounds.rounds == 1
    run_rounds(config, range(1))  # what the daemon leaves after its only round
    capsys.readouterr()
    assert main(["run", "--config", str(member)]) == 0
    out = capsys.readouterr().out
    assert "already finished: all 1 rounds are done (checkpoint at round 0)" in out

"""The audit salt is a node's secret: an outsider with the roster and config cannot undo it."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.daemon import open_governance, prepare
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import ConfigError
from p2pfed.governance.audit import compare_logs, hash_peer_id
from p2pfed.governance.recorder import DPRecord
from p2pfed.identity import Roster


def test_init_makes_a_private_salt_beside_the_key_and_not_in_the_config(tmp_path: Path) -> None:
    folder = tmp_path / "st-olav"
    assert main(["init", str(folder), "--name", "st-olav"]) == 0
    salt = folder / "audit.salt"
    assert salt.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(salt.read_text())) == 32
    config_text = (folder / "config.toml").read_text()
    assert salt.read_text().strip() not in config_text and "audit_salt" not in config_text
    again = tmp_path / "other"
    assert main(["init", str(again), "--name", "other"]) == 0
    assert (again / "audit.salt").read_text() != salt.read_text()  # one per node


def record_a_round(config_path: Path, cohort: list[str]) -> Path:
    """One round as the daemon records it: cohort (salted) and model version."""
    prepared = prepare(load_config(config_path))
    recorder = open_governance(prepared, prepared.gate.roster.consortium_id, 2)
    recorder.begin_round(0, roster_version=1, mode="ring", cohort=cohort)
    recorder.finish_round(
        0,
        [("w", np.ones(3, dtype=np.float32))],
        dp=DPRecord(1.0, 1.0, 1.0, 1e-5, 0.5, "rdp"),
        metrics={"accuracy": 0.9},
        duration_s=0.1,
    )
    recorder.stop(reason="finished")
    return prepared.state_dir / "audit.jsonl"


def test_an_outsider_with_roster_and_config_cannot_undo_the_peer_hashes(tmp_path: Path) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    a, b = c.hospitals[0], c.hospitals[1]
    roster = Roster.load(a.folder / "roster.json")
    members = [m.peer_id for m in roster.members]
    logs = [record_a_round(h.config, members) for h in (a, b)]

    def cohort_hashes(log: Path) -> set[str]:
        entries = [json.loads(x) for x in log.read_text().splitlines()]
        return {p for e in entries if e["kind"] == "cohort" for p in e["body"]["peers"]}

    seen = cohort_hashes(logs[0])
    assert len(seen) == len(members)
    # The outsider's guesses: the old public derivation, the config, the consortium name.
    consortium = roster.consortium_id
    guesses = [
        hashlib.sha256(b"p2pfed audit salt\0" + consortium.encode()).digest(),
        consortium.encode(),
        load_config(a.config).governance.audit_salt.encode(),
        (a.folder / "config.toml").read_bytes(),
    ]
    for salt in guesses:
        assert not {hash_peer_id(salt, m) for m in members} & seen
    # The node itself (holder of the salt) re-identifies every member: the test can fail.
    mine = bytes.fromhex((a.folder / "audit.salt").read_text())
    assert {hash_peer_id(mine, m) for m in members} == seen
    # Another member's log hashes the same peers differently, yet the logs still compare.
    assert cohort_hashes(logs[1]).isdisjoint(seen)
    report = compare_logs(logs)
    assert report.ok and report.agreed == 1


def test_a_salt_in_the_shared_config_or_readable_by_others_is_refused(tmp_path: Path) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    h = c.hospitals[0]
    text = h.config.read_text()
    h.config.write_text(text + '\n[governance]\naudit_salt = "' + "ab" * 32 + '"\n')
    with pytest.raises(ConfigError, match="audit_salt must not be in the config"):
        prepare(load_config(h.config))
    h.config.write_text(text)
    prepare(load_config(h.config))  # makes the salt for an install that predates it
    salt = h.folder / "audit.salt"
    assert salt.stat().st_mode & 0o777 == 0o600
    os.chmod(salt, 0o644)
    with pytest.raises(ConfigError, match="must be private"):
        prepare(load_config(h.config))

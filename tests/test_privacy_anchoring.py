"""Attacks on the privacy ledger's history, each refused at daemon start (issue 13).

A node's history is built as the daemon builds it: releases reserved in the ledger, the
checkpoint written by ``Peer._save`` and the ``dp`` audit entry by ``GovernanceRecorder``,
both carrying the ledger's head. Then the ledger is cut, deleted, rolled back or replaced,
and ``prepare`` (what ``p2pfed run`` calls before the network) must refuse in one sentence,
never opening with a lower ε.
"""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfed.cli import main
from p2pfed.config import Config, load_config
from p2pfed.daemon import open_governance, prepare
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import IntegrityError
from p2pfed.governance.recorder import DPRecord
from p2pfed.node.peer import Peer
from p2pfed.privacy import NoiseMode, PrivacyLedger, Release
from p2pfed.privacy.ledger_format import LEDGER_FORMAT, encode_line
from p2pfed.training.models import build_model
from p2pfed.training.trainer import LocalTrainer

RELEASE = Release(0, 1.0, 0.1, 10, 1.0, NoiseMode.DP_SGD)


@pytest.fixture
def member(tmp_path: Path) -> Path:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    config = c.hospitals[0].config
    # RDP composes in microseconds; what is tested is the anchoring, not the accountant
    config.write_text(config.read_text().replace("[privacy]", '[privacy]\naccountant = "rdp"'))
    return config


def run_rounds(config: Config, rounds: range) -> None:
    """What the daemon records for each round: reserve, checkpoint, audit ``dp`` entry."""
    prepared = prepare(config)
    p = config.privacy
    model = build_model("logistic", prepared.train.n_features, 2, (), 0)
    trainer = LocalTrainer(model, config.training, torch.Generator().manual_seed(0))
    recorder = open_governance(prepared, prepared.gate.roster.consortium_id, 2)
    with PrivacyLedger(
        config.path(p.ledger), 1e6, p.delta, p.accountant, anchors=prepared.ledger_anchors
    ) as ledger:
        peer = types.SimpleNamespace(
            releaser=types.SimpleNamespace(ledger=ledger),
            trainer=trainer,
            bytes_sent=0,
            next_round=0,
            model_round=-1,
            checkpoint_path=prepared.state_dir / "checkpoint.pt",
            certificate=None,  # these rounds are not certified
        )
        for r in rounds:
            ledger.reserve(Release(r, 1.0, 0.1, 10, 1.0, NoiseMode.DP_SGD))
            peer.model_round, peer.next_round = r, r + 1
            Peer._save(peer)  # type: ignore[arg-type]
            recorder.begin_round(r, roster_version=1, mode="ring", cohort=[])
            recorder.finish_round(
                r,
                [("w", np.full(3, float(r), dtype=np.float32))],
                dp=DPRecord(
                    1.0,
                    1.0,
                    0.1,
                    p.delta,
                    ledger.spent_epsilon(),
                    p.accountant,
                    10,
                    None,
                    ledger_head=ledger.head().to_dict(),
                ),
                metrics={"accuracy": 0.5},
                duration_s=0.1,
            )
    recorder.stop(reason="finished")


def spent(config: Config) -> float:
    p = config.privacy
    with PrivacyLedger(config.path(p.ledger), 1e6, p.delta, p.accountant, read_only=True) as led:
        return led.spent_epsilon()


def refused(config: Config, match: str) -> str:
    with pytest.raises(IntegrityError, match=match) as info:
        prepare(config)
    message = str(info.value)
    assert "\n" not in message and "p2pfed privacy recover" in message
    return message


def test_an_honest_history_reopens_and_extends(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(3))
    assert len(prepare(config).ledger_anchors) == 2  # the checkpoint and the audit log
    run_rounds(config, range(3, 5))
    entries = [json.loads(x) for x in (config.path("state") / "audit.jsonl").read_text().split()]
    heads = [e["body"]["ledger_head"] for e in entries if e["kind"] == "dp"]
    assert [h["seq"] for h in heads] == [1, 2, 3, 4, 5]


def test_truncating_inside_record_one_is_refused(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(3))
    before = spent(config)
    path = config.path(config.privacy.ledger)
    data = path.read_bytes()
    first = data.index(b"\n") + 1
    path.write_bytes(data[: first + 20])  # inside release 1: it used to open as ε = 0
    msg = refused(config, r"holds 0 release\(s\).*records 3")
    assert "checkpoint" in msg
    assert path.read_bytes() == data[: first + 20]  # nothing was rewritten
    with pytest.raises(IntegrityError):
        PrivacyLedger(path, 1e6, 1e-5, "rdp", anchors=prepare_anchors(config))
    assert before > 0


def prepare_anchors(config: Config) -> tuple:
    from p2pfed.governance import ledger_anchors as anchors

    state = config.path("state")
    return anchors.collect(state / "checkpoint.pt", state / "audit.jsonl").heads


def test_deleting_the_ledger_with_a_checkpoint_present_is_refused(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(member)
    run_rounds(config, range(2))
    config.path(config.privacy.ledger).unlink()
    refused(config, r"is missing but checkpoint .* records 2 release\(s\)")
    assert not config.path(config.privacy.ledger).exists()  # not recreated empty
    assert main(["run", "--config", str(member)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is missing" in err and "Traceback" not in err


def test_deleting_ledger_and_checkpoint_is_still_refused_by_the_audit_log(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(2))
    config.path(config.privacy.ledger).unlink()
    (config.path("state") / "checkpoint.pt").unlink()
    refused(config, r"is missing but audit log .*\(round 1\) records 2 release\(s\)")


@pytest.mark.parametrize("k", [1, 2])
def test_dropping_the_last_records_is_refused(member: Path, k: int) -> None:
    config = load_config(member)
    run_rounds(config, range(3))
    before = spent(config)
    path = config.path(config.privacy.ledger)
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(lines[: len(lines) - k]) + b"\n")
    assert spent(config) < before  # what a node without anchors would have believed
    refused(config, rf"holds {3 - k} release\(s\).*records 3")


def test_rolling_back_to_an_older_copy_is_refused(member: Path, tmp_path: Path) -> None:
    config = load_config(member)
    path = config.path(config.privacy.ledger)
    run_rounds(config, range(2))
    shutil.copy(path, tmp_path / "backup")  # the same chain, an older head
    run_rounds(config, range(2, 4))
    shutil.copy(tmp_path / "backup", path)
    refused(config, r"holds 2 release\(s\).*records 4")


def test_a_different_history_of_the_same_length_is_refused(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(2))
    path = config.path(config.privacy.ledger)
    path.unlink()
    with PrivacyLedger(path, 1e6, 1e-5, "rdp") as forged:  # no anchors: the forger's view
        for r in range(2):
            forged.reserve(Release(r, 50.0, 0.1, 10, 1.0, NoiseMode.DP_SGD))  # tiny ε
    refused(config, "differs at release 2 from what checkpoint")


def test_a_torn_record_after_the_anchored_head_is_repaired_and_recorded(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(2))
    path = config.path(config.privacy.ledger)
    whole = path.read_bytes()
    with PrivacyLedger(path, 1e6, 1e-5, "rdp") as led:
        led.reserve(RELEASE)
    third = path.read_bytes()[len(whole) :]
    path.write_bytes(whole + third[:40])  # a crash inside the third reserve
    run_rounds(config, range(2, 3))  # prepare accepts it; the daemon's open repairs it
    lines = path.read_bytes().split(b"\n")
    notes = [json.loads(x.split(b" ", 1)[1]) for x in lines if b'"repair"' in x]
    assert len(notes) == 1 and notes[0]["after_seq"] == 2 and notes[0]["torn_bytes"] == 40
    assert (path.parent / (path.name + ".torn")).read_bytes() == third[:40] + b"\n"


def test_a_torn_record_beyond_the_anchored_head_is_refused(member: Path) -> None:
    config = load_config(member)
    run_rounds(config, range(2))
    path = config.path(config.privacy.ledger)
    with PrivacyLedger(path, 1e6, 1e-5, "rdp") as led:
        led.reserve(RELEASE)  # a round that failed after its reservation: not anchored
        led.reserve(RELEASE)
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 30])
    refused(config, "torn record after release 3, but the last anchored release is 2")


def test_an_old_format_ledger_is_refused_naming_its_version(member: Path) -> None:
    config = load_config(member)
    path = config.path(config.privacy.ledger)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(encode_line({"type": "header", "format": 1, "mechanism": "x"}))
    refused(config, f"is in format 1 .* reads format {LEDGER_FORMAT}")


def truncate_in_record_one(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n") + 20])


def drop_last_two(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")


ATTACKS = {
    "truncate-record-1": truncate_in_record_one,
    "delete": Path.unlink,
    "drop-last-2": drop_last_two,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_recover_rebuilds_without_lowering_the_spend(
    member: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(member)
    run_rounds(config, range(3))
    path = config.path(config.privacy.ledger)
    with PrivacyLedger(path, 1e6, 1e-5, "rdp") as led:  # a round that failed after reserving
        led.reserve(RELEASE)
    before = spent(config)
    ATTACKS[attack](path)
    with pytest.raises(IntegrityError):
        prepare(config)
    assert main(["privacy", "recover", "--config", str(member), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["epsilon"] >= doc["highest_recorded_epsilon"]
    after = spent(config)
    # the audit log and checkpoint know 3 releases; the 4th survives only if the file kept it
    assert after >= spent_of(3) * (1 - 1e-9)
    if attack == "drop-last-2":
        assert doc["kept_from_old_ledger"] == 2
    prepare(config)  # the rebuilt ledger is accepted against the old anchors
    run_rounds(config, range(3, 4))  # and extends, anchoring its new chain
    assert spent(config) > after
    assert before > 0


def spent_of(releases: int) -> float:
    from p2pfed.privacy import make_accountant

    acc = make_accountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=10 * releases)
    return acc.get_epsilon(1e-5)


def test_recover_counts_reservations_of_failed_rounds(member: Path) -> None:
    from p2pfed.governance.ledger_recovery import recover

    config = load_config(member)
    run_rounds(config, range(2))
    path = config.path(config.privacy.ledger)
    with PrivacyLedger(path, 1e6, 1e-5, "rdp") as led:
        led.reserve(RELEASE)  # rounds 2 and 3 reserved, then failed: no audit dp entry
        led.reserve(RELEASE)
    run_rounds(config, range(4, 5))  # its dp entry's head says release 5
    before = spent(config)
    path.unlink()
    state = config.path("state")
    done = recover(
        path,
        state / "audit.jsonl",
        state / "checkpoint.pt",
        delta=1e-5,
        accountant="rdp",
        mode=NoiseMode.DP_SGD,
    )
    assert done.releases == 5 and done.from_audit == 5 and done.salvaged == 0
    assert spent(config) == pytest.approx(before, rel=1e-9)
    prepare(config)


def test_recover_converts_an_old_format_ledger_keeping_its_spend(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pfed.privacy.ledger_format import LedgerRecord, record_body

    config = load_config(member)
    path = config.path(config.privacy.ledger)
    path.parent.mkdir(exist_ok=True)
    lines = [encode_line({"type": "header", "format": 1, "mechanism": "x"})]
    for seq in (1, 2):
        body = record_body(LedgerRecord(seq, 1.0, RELEASE), "")
        del body["prev"]
        lines.append(encode_line(body))
    path.write_bytes(b"".join(lines))
    assert main(["privacy", "recover", "--config", str(member)]) == 0
    assert "2 kept" in capsys.readouterr().out
    assert spent(config) == pytest.approx(spent_of(2), rel=1e-9)
    prepare(config)


def test_recover_refuses_while_the_node_holds_the_ledger(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(member)
    run_rounds(config, range(1))
    with PrivacyLedger(config.path(config.privacy.ledger), 1e6, 1e-5, "rdp"):
        assert main(["privacy", "recover", "--config", str(member)]) == 2
    assert "is in use; stop the node first" in capsys.readouterr().err


def test_privacy_report_does_not_show_a_cut_ledger_as_a_small_spend(
    member: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(member)
    run_rounds(config, range(3))
    truncate_in_record_one(config.path(config.privacy.ledger))
    assert main(["privacy", "report", "--config", str(member)]) == 2
    err = capsys.readouterr().err
    assert "holds 0 release(s)" in err and "ε spent 0" not in err

"""The study protocol in use: the CLI flow, the daemon's start-up checks, and the session."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from p2pfed.cli import main
from p2pfed.collectives import RingConfig
from p2pfed.collectives.agreement_state import AgreementTiming
from p2pfed.collectives.messages import Ready
from p2pfed.collectives.round import ControlService, RingRound, RoundOutcome
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.config import load_config
from p2pfed.daemon import prepare
from p2pfed.daemon.build import build_peer, build_trainer, cohort_of
from p2pfed.daemon.reporter import RoundReporter, open_governance
from p2pfed.demo import CONSORTIUM, DemoSettings, build_consortium
from p2pfed.errors import ConfigError, DataError
from p2pfed.identity import Identity, RosterError, RosterProblem, StudyProtocol
from p2pfed.node.roster_sync import session_id, sync_session_id
from p2pfed.transport.memory import MemoryNetwork


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A demo member whose config names a protocol written from it and signed by the admin."""
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    config = c.hospitals[0].config
    protocol = config.parent / "protocol.json"
    code, _, err = cli(
        capsys, "protocol", "init", str(protocol), "--consortium", CONSORTIUM,
        "--config", str(config),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        capsys, "protocol", "sign", str(protocol), "--key", str(c.root / "admin.key"),
        "--roster", str(config.parent / "roster.json"),
    )  # fmt: skip
    assert code == 0, err
    config.write_text(config.read_text() + '\n[study]\nprotocol = "protocol.json"\n')
    return config


def rewrite_csv(path: Path, change: object) -> None:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert callable(change)
    rows = change(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_the_cli_writes_signs_2_of_3_and_shows_a_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = []
    for i in range(3):
        Identity.from_seed(bytes([40 + i]) * 32).save(tmp_path / f"admin{i}.key")
        keys.append(str(tmp_path / f"admin{i}.key"))
    roster, protocol = str(tmp_path / "roster.json"), str(tmp_path / "protocol.json")
    admin_flags = [flag for key in keys for flag in ("--admin-key", key)]
    assert cli(capsys, "roster", "init", roster, "--consortium", "cardio", *admin_flags,
               "--threshold", "2")[0] == 0  # fmt: skip
    data = tmp_path / "site.csv"
    data.write_text("age,bp,outcome\n61,130,1\n")
    code, _, err = cli(capsys, "protocol", "init", protocol, "--consortium", "cardio",
                       "--from-data", str(data))  # fmt: skip
    assert code == 2 and "has no label column 'label' (set --label)" in err
    code, out, _ = cli(
        capsys, "protocol", "init", protocol, "--consortium", "cardio", "--from-data", str(data),
        "--label", "outcome", "--classes", "0,1",
    )  # fmt: skip
    assert code == 0 and "2 features, unsigned" in out
    document = StudyProtocol.load(protocol)
    assert [f.name for f in document.features] == ["age", "bp"]
    assert document.label_column == "outcome" and document.classes == (0, 1)

    code, out, err = cli(capsys, "protocol", "show", protocol, "--roster", roster)
    assert code == 2 and "carries 0 valid signatures" in err and err.count("\n") == 1
    assert f"sha256:{document.digest()}" in out
    assert cli(capsys, "protocol", "sign", protocol, "--key", keys[0], "--roster", roster)[0] == 0
    code, _, err = cli(capsys, "protocol", "sign", protocol, "--key", keys[0])
    assert code == 2 and "already signed" in err
    assert cli(capsys, "protocol", "show", protocol, "--roster", roster)[0] == 2
    assert cli(capsys, "protocol", "sign", protocol, "--key", keys[2])[0] == 0
    code, out, _ = cli(capsys, "protocol", "show", protocol, "--roster", roster, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["valid"] is True and shown["hash"] == document.digest()
    assert shown["status"] == "signed by 2 of 3 admins (threshold 2)"
    assert shown["protocol"]["features"][1]["name"] == "bp"

    outsider = tmp_path / "outsider.key"
    Identity.from_seed(b"\x09" * 32).save(outsider)
    code, _, err = cli(capsys, "protocol", "sign", protocol, "--key", str(outsider), "--roster",
                       roster)  # fmt: skip
    assert code == 2 and "is not an admin of roster" in err


def test_a_site_whose_columns_are_in_another_order_prepares_the_same_data(site: Path) -> None:
    before = prepare(load_config(site))
    assert before.protocol is not None and before.report.passed
    names = tuple(f.name for f in before.protocol.features)
    assert before.config.data.feature_columns == names
    rewrite_csv(site.parent / "patients.csv", lambda rows: [row[::-1] for row in rows])
    after = prepare(load_config(site))
    assert after.report.passed
    assert after.train.feature_names == names
    np.testing.assert_array_equal(after.train.x, before.train.x)
    np.testing.assert_array_equal(after.test.y, before.test.y)


def test_a_site_missing_columns_is_refused_with_one_sentence_per_column(site: Path) -> None:
    def drop(rows: list[list[str]]) -> list[list[str]]:
        return [row[2:] for row in rows]

    with (site.parent / "patients.csv").open() as fh:
        gone = next(csv.reader(fh))[:2]
    rewrite_csv(site.parent / "patients.csv", drop)
    with pytest.raises(DataError) as info:
        prepare(load_config(site))
    sentences = str(info.value).split("; ")
    assert [s.split(": ", 1)[1] for s in sentences] == [
        f"no feature column {name!r} in the header" for name in gone
    ]


def test_a_site_with_an_undeclared_label_class_is_refused(site: Path) -> None:
    def relabel(rows: list[list[str]]) -> list[list[str]]:
        return [rows[0]] + [[*row[:-1], "2"] if i < 5 else row for i, row in enumerate(rows[1:])]

    rewrite_csv(site.parent / "patients.csv", relabel)
    with pytest.raises(DataError, match=r"labels \[2\] are not declared by the consortium"):
        prepare(load_config(site))


def test_config_settings_that_differ_from_the_protocol_are_each_named(site: Path) -> None:
    text = site.read_text()
    site.write_text(
        text.replace("rounds = 1\n", "rounds = 5\n").replace('kind = "logistic"', 'kind = "mlp"')
    )
    with pytest.raises(ConfigError) as info:
        prepare(load_config(site))
    message = str(info.value)
    assert "config key [model] kind = 'mlp' differs from the study protocol's model kind" in message
    assert "config key [rounds] rounds = 5 differs from the study protocol's rounds 1" in message
    assert message.count("differs") == 2


def test_an_unsigned_or_tampered_protocol_stops_the_node(site: Path) -> None:
    path = site.parent / "protocol.json"
    signed = StudyProtocol.load(path)
    document = json.loads(path.read_text())
    document["body"]["features"][0]["center"] += 1.0  # one site shifts the agreed centre
    path.write_text(json.dumps(document))
    with pytest.raises(RosterError, match="changed after it was signed") as info:
        prepare(load_config(site))
    assert info.value.problem is RosterProblem.TAMPERED
    dataclasses.replace(signed, signatures=()).save(path)
    with pytest.raises(RosterError, match="carries 0 valid signatures"):
        prepare(load_config(site))


def test_the_session_every_round_message_carries_names_the_protocol(site: Path) -> None:
    prepared = prepare(load_config(site))
    cohort = cohort_of(prepared)
    assert prepared.protocol is not None and cohort is not None
    assert cohort.session == session_id(CONSORTIUM, 1, prepared.protocol.digest())
    assert prepared.protocol.digest()[:16] in cohort.session
    assert cohort.session != session_id(CONSORTIUM, 1)
    # Model sync too: a member of another protocol can neither serve nor fetch a model.
    assert sync_session_id(CONSORTIUM, prepared.protocol.digest()) == (
        f"{CONSORTIUM}~{prepared.protocol.digest()[:16]}"
    )


async def test_a_peer_on_another_protocol_is_refused_and_named_never_mixed_in() -> None:
    """Same consortium and roster version, another protocol: its messages never arrive."""
    ours, theirs = "a" * 64, "b" * 64
    network = MemoryNetwork()
    with trio.fail_after(5):
        async with network.open("other") as other, network.open("me") as me:
            receiving = ControlService(me, session_id("cardio", 1, ours), timeout=1)
            mailbox = receiving.open_round(0)
            attacker = ControlService(other, session_id("cardio", 1, theirs), timeout=1)
            await attacker.send("me", Ready(0, 0, 0))
            with pytest.raises(trio.WouldBlock):
                mailbox.receive_nowait()
            assert [e.peer for e in receiving.exclusions] == ["other"]
            # The same member on the same protocol is heard.
            await ControlService(other, session_id("cardio", 1, ours), timeout=1).send(
                "me", Ready(0, 0, 0)
            )
            assert mailbox.receive_nowait() == ("other", Ready(0, 0, 0))


async def test_members_on_another_protocol_never_exchange_an_update(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three members on protocol A and one on B run a ring round: B's vector is in no sum."""
    peers = ["a", "b", "c", "d"]
    sessions = {p: session_id("cardio", 1, ("b" if p == "d" else "a") * 64) for p in peers}
    seeds = {p: bytes([i + 1]) * 32 for i, p in enumerate(peers)}
    public = {p: Ed25519CohortSigner(seeds[p], {}).public_key for p in peers}
    vectors = {p: np.full(64, 10 ** (i + 1), dtype=np.uint32) for i, p in enumerate(peers)}
    outcomes: dict[str, RoundOutcome] = {}
    network = MemoryNetwork()
    timing = AgreementTiming(collect_window=1.0, takeover_timeout=3.0, commit_timeout=6.0)

    async def peer(me: str) -> None:
        async with network.open(me) as transport:
            runner = RingRound(
                transport,
                sessions[me],
                1,
                peers,
                Ed25519CohortSigner(seeds[me], public),
                timing=timing,
                ring_config=RingConfig(chunk_bytes=512, timeout=2.0),
                max_attempts=3,
            )
            await trio.sleep(0.1)  # every transport is open before the first message
            outcomes[me] = await runner.all_reduce(vectors[me], 0)
            await trio.sleep(timing.takeover_timeout)

    async with trio.open_nursery() as nursery:
        for p in peers:
            nursery.start_soon(peer, p)
    expected = sum(vectors[p] for p in "abc")
    for p in "abc":
        got = outcomes[p]
        assert got.committed, got
        assert got.cohort == ("a", "b", "c") and got.result is not None
        np.testing.assert_array_equal(got.result.vector, expected)
    # The outsider is left with a "sum" of its own vector alone: it learnt nothing of theirs.
    other = outcomes["d"]
    assert other.cohort == ("d",)
    assert other.result is not None
    np.testing.assert_array_equal(other.result.vector, vectors["d"])


def test_run_refuses_a_site_missing_a_column_with_one_line_and_no_traceback(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (site.parent / "patients.csv").open() as fh:
        first = next(csv.reader(fh))[0]
    rewrite_csv(site.parent / "patients.csv", lambda rows: [row[1:] for row in rows])
    code, _, err = cli(capsys, "run", "--config", str(site))
    assert code == 2 and "Traceback" not in err
    data = site.parent / "patients.csv"
    assert err == f"p2pfed: error: {data}: no feature column {first!r} in the header\n"
    assert not (site.parent / "state" / "audit.jsonl").exists()  # no start was recorded


def test_data_keys_the_config_sets_must_match_and_a_builtin_set_cannot_follow(
    site: Path,
) -> None:
    config = load_config(site)
    shifted = (config.schema.center[0] + 1.0, *config.schema.center[1:])
    text = site.read_text()
    first = repr(config.schema.center[0])
    site.write_text(text.replace(f"center = [{first}", f"center = [{shifted[0]!r}", 1))
    with pytest.raises(ConfigError, match=r"config key \[schema\] center = .* differs from the "
                       r"study protocol's feature centers"):  # fmt: skip
        prepare(load_config(site))
    site.write_text(text.replace('path = "patients.csv"', 'builtin = "breast_cancer"'))
    with pytest.raises(ConfigError, match=r"\[data\] builtin cannot follow a study protocol"):
        prepare(load_config(site))


async def test_the_daemons_model_sync_runs_in_the_protocols_session(site: Path) -> None:
    prepared = prepare(load_config(site))
    cohort = cohort_of(prepared)
    assert cohort is not None
    trainer = build_trainer(prepared)
    recorder = open_governance(prepared, cohort.roster.consortium_id, 2)
    reporter = RoundReporter(prepared, {"state": "starting"}, recorder, None, trainer.layout)
    with recorder.audit:
        async with MemoryNetwork().open(prepared.identity.peer_id) as transport:
            peer = build_peer(prepared, transport, cohort, trainer, None, reporter)  # type: ignore[arg-type]
            assert prepared.protocol is not None
            expected = sync_session_id(CONSORTIUM, prepared.protocol.digest())
            assert peer.sync.consortium == expected != CONSORTIUM

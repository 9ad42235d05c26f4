import json

import pytest

from p2pfed.cli import main
from tests.governance_helpers import make_signer, write_demo_log

ALICE = make_signer(b"a" * 32)


@pytest.fixture
def logs(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_demo_log(a, ALICE)
    write_demo_log(b, make_signer(b"b" * 32), variant={2: "x"})
    return a, b


def test_audit_verify_ok_and_json(logs, capsys):
    a, _ = logs
    assert main(["audit", "verify", str(a)]) == 0
    out = capsys.readouterr().out
    assert "OK, 19 entries" in out and "not checked against a roster" in out
    assert main(["audit", "verify", str(a), "--public-key", ALICE.public_key.hex(), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["trust"] == "public-key" and doc["problem"] is None


def test_audit_verify_names_the_first_bad_entry(logs, capsys):
    a, _ = logs
    lines = a.read_bytes().splitlines(keepends=True)
    del lines[6]
    a.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(a), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["problem"] == {
        "line": 7,
        "seq": 7,
        "kind": "missing-entries",
        "msg": "sequence jumps from 5 to 7: entries 6 were removed",
    }
    assert main(["audit", "verify", str(a)]) == 1
    assert "BAD at line 7 (seq 7): missing-entries" in capsys.readouterr().out


def test_audit_verify_with_wrong_public_key(logs, capsys):
    a, _ = logs
    other = make_signer(b"z" * 32).public_key.hex()
    assert main(["audit", "verify", str(a), "--public-key", other]) == 1
    assert "untrusted-key" in capsys.readouterr().out


def test_audit_compare(logs, capsys):
    a, b = logs
    assert main(["audit", "compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE at round 2" in out and str(a) in out and str(b) in out
    assert main(["audit", "compare", str(a), str(a)]) == 2
    assert "listed twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "verify", "/nonexistent/log.jsonl"], "cannot read audit log /nonexistent"),
        (["audit", "verify", "{log}", "--public-key", "abcd"], "is not 64 hex digits"),
        (["audit", "compare", "{log}"], "at least two audit logs"),
    ],
)
def test_audit_cli_one_clear_error(logs, capsys, argv, message):
    argv = [x.replace("{log}", str(logs[0])) for x in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pfed: error: ") and message in err
    assert err.count("\n") == 1


def write_roster(path, *signers, expires_days=365, sign=True):
    from datetime import UTC, datetime, timedelta

    from p2pfed.identity import Member, Roster

    admin = make_signer(b"A" * 32)
    roster = Roster(
        consortium_id="demo",
        version=1,
        expires_at=datetime.now(UTC) + timedelta(days=expires_days),
        members=tuple(Member.from_public_key(f"h{i}", s.public_key) for i, s in enumerate(signers)),
        admins=(admin.public_key,),
        threshold=1,
    )
    if sign:
        roster = roster.signed_by(admin)
    roster.save(path)
    return path


def test_audit_verify_against_a_roster(logs, tmp_path, capsys):
    a, b = logs
    roster = write_roster(tmp_path / "roster.json", ALICE)
    assert main(["audit", "verify", str(a), "--roster", str(roster), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trust"] == "roster"
    assert main(["audit", "verify", str(b), "--roster", str(roster)]) == 1
    assert "not-a-member" in capsys.readouterr().out
    # An expired roster still verifies old logs; an unsigned one does not vouch for anything.
    old = write_roster(tmp_path / "old.json", ALICE, expires_days=-30)
    assert main(["audit", "verify", str(a), "--roster", str(old)]) == 0
    capsys.readouterr()
    unsigned = write_roster(tmp_path / "unsigned.json", ALICE, sign=False)
    assert main(["audit", "verify", str(a), "--roster", str(unsigned)]) == 2
    assert "signature" in capsys.readouterr().err
    assert main(["audit", "compare", str(a), str(b), "--roster", str(roster), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["unverified"]) == [str(b)]


def test_audit_show_filters_and_stops_at_the_first_bad_entry(logs, capsys):
    a, _ = logs
    assert main(["audit", "show", str(a), "--kind", "dp", "--round", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "epsilon=1.0" in out and "OK, 19 entries" in err
    assert main(["audit", "show", str(a), "--kind", "cohort", "--json"]) == 0
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [d["body"]["round"] for d in docs] == [1, 2, 3]
    lines = a.read_bytes().splitlines(keepends=True)
    del lines[4]
    a.write_bytes(b"".join(lines))
    assert main(["audit", "show", str(a)]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 4 and "BAD at line 5" in err
    assert main(["audit", "show", str(a), "--kind", "nope"]) == 2
    assert "is not one of" in capsys.readouterr().err


def test_bench_governance_prints_figures_with_baselines(tmp_path, capsys):
    argv = ["bench", "governance", "--entries", "5", "--model-mb", "1", "--repeat", "1"]
    assert main([*argv, "--dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in (
        "append_ms_per_entry",
        "baseline_write_fsync_ms_per_entry",
        "verify_us_per_entry",
        "baseline_ed25519_verify_us_per_entry",
        "model_hash_mb_s",
        "baseline_sha256_mb_s",
    ):
        assert doc[key] > 0, key
    assert list(tmp_path.iterdir()) == []  # temporary files removed
    assert main([*argv, "--dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err

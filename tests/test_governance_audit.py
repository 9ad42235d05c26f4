import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfed.canonical import canonical_json
from p2pfed.errors import ConfigError, IntegrityError, LocalError
from p2pfed.governance.audit import (
    GENESIS_HASH,
    AuditLog,
    EntryKind,
    ProblemKind,
    compare_logs,
    entry_hash,
    hash_peer_id,
    signing_message,
    verify_log,
)
from p2pfed.identity import peer_id_from_public_key
from tests.governance_helpers import SALT, FakeClock, make_signer, model_hash_for, write_demo_log

ALICE = make_signer(b"a" * 32)
MALLORY = make_signer(b"m" * 32)


@pytest.fixture(scope="module")
def demo_log_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "audit.jsonl"
    write_demo_log(path, ALICE)
    return path.read_bytes()


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_demo_log(path, ALICE)
    return path


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path, lines):
    path.write_bytes(b"".join(lines))


def entries_of(path):
    return [json.loads(x) for x in lines_of(path)]


def dump(entry):
    return canonical_json(entry) + b"\n"


def test_clean_log_verifies_and_has_the_expected_shape(log_path):
    report = verify_log(log_path)
    assert report.ok, report.summary()
    entries = entries_of(log_path)
    assert report.entries == len(entries) == 2 + 3 * 5 + 1 + 1
    assert report.head == entry_hash(entries[-1])
    assert entries[0]["prev"] == GENESIS_HASH
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert {e["kind"] for e in entries} >= {k.value for k in EntryKind} - {
        "roster_change",
        "drift_alert",
        "unreachable",
        "link",
        "model_certified",  # only when a certificate comes after its round
    }
    assert verify_log(log_path, public_key=ALICE.public_key).trust == "public-key"
    assert verify_log(log_path, members={ALICE.peer_id: ALICE.public_key}).ok


def test_cohort_and_exclusion_never_store_raw_peer_ids(log_path):
    text = log_path.read_text()
    for raw in ("peer-a", "peer-b", "peer-c", "peer-x"):
        assert raw not in text
    cohort = next(e for e in entries_of(log_path) if e["kind"] == "cohort")
    assert hash_peer_id(SALT, "peer-a") in cohort["body"]["peers"]
    assert cohort["body"]["size"] == 3


def check_first_bad(path, kind, line, **kw):
    report = verify_log(path, **kw)
    assert not report.ok
    assert report.problem.kind == kind, report.summary()
    assert report.problem.line == line, report.summary()
    assert report.entries == line - 1
    return report


def test_edited_body_is_caught_at_that_entry(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[9])
    assert e["kind"] == "dp" or "round" in e["body"]
    e["body"]["round"] = 99
    lines[9] = dump(e)
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.BAD_SIGNATURE, 10)


def test_edited_body_in_place_with_text_replace_is_caught(log_path):
    text = log_path.read_text()
    assert '"epsilon":1.0' in text
    log_path.write_text(text.replace('"epsilon":1.0', '"epsilon":0.1', 1))
    report = verify_log(log_path)
    assert report.problem.kind == ProblemKind.BAD_SIGNATURE
    assert report.problem.seq == report.problem.line - 1


def test_edited_signature_is_caught(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[4])
    e["sig"] = ("0" if e["sig"][0] != "0" else "1") + e["sig"][1:]
    lines[4] = dump(e)
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.BAD_SIGNATURE, 5)


def test_removed_signature_is_caught(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[6])
    del e["sig"]
    lines[6] = dump(e)
    write_lines(log_path, lines)
    report = check_first_bad(log_path, ProblemKind.MISSING_SIGNATURE, 7)
    assert report.problem.seq == 6


def test_deleted_entry_is_caught_as_missing(log_path):
    lines = lines_of(log_path)
    del lines[5]
    write_lines(log_path, lines)
    report = check_first_bad(log_path, ProblemKind.MISSING_ENTRIES, 6)
    assert "entries 5 were removed" in report.problem.message


def test_deleted_first_entry_is_caught(log_path):
    write_lines(log_path, lines_of(log_path)[1:])
    check_first_bad(log_path, ProblemKind.MISSING_ENTRIES, 1)


def test_truncation_in_the_middle_is_caught(log_path):
    lines = lines_of(log_path)
    write_lines(log_path, lines[:4] + lines[11:])
    report = check_first_bad(log_path, ProblemKind.MISSING_ENTRIES, 5)
    assert "4..10" in report.problem.message


def test_line_cut_in_the_middle_is_caught(log_path):
    lines = lines_of(log_path)
    lines[3] = lines[3][:40] + b"\n"
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.MALFORMED, 4)


def test_swapped_entries_are_caught_as_reordered(log_path):
    lines = lines_of(log_path)
    lines[7], lines[8] = lines[8], lines[7]
    write_lines(log_path, lines)
    report = check_first_bad(log_path, ProblemKind.REORDERED, 8)
    assert report.problem.seq == 8


def test_duplicated_entry_is_caught(log_path):
    lines = lines_of(log_path)
    lines.insert(6, lines[5])
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.DUPLICATE, 7)


def forged_entry(after, signer, key_hex=None):
    entry = {
        "v": 1,
        "seq": after["seq"] + 1,
        "ts": after["ts"] + 1,
        "kind": "model_version",
        "body": {"round": 9, "model_hash": "cd" * 32, "parent_hash": None},
        "prev": entry_hash(after),
        "signer": signer.peer_id if key_hex is None else after["signer"],
        "key": signer.public_key.hex() if key_hex is None else key_hex,
    }
    entry["sig"] = signer.sign(signing_message(entry)).hex()
    return entry


def test_forged_entry_signed_by_another_key_is_caught(log_path):
    lines = lines_of(log_path)
    lines.append(dump(forged_entry(json.loads(lines[-1]), MALLORY)))
    write_lines(log_path, lines)
    n = len(lines)
    check_first_bad(log_path, ProblemKind.KEY_CHANGED, n)
    check_first_bad(log_path, ProblemKind.UNTRUSTED_KEY, n, public_key=ALICE.public_key)
    check_first_bad(
        log_path, ProblemKind.NOT_A_MEMBER, n, members={ALICE.peer_id: ALICE.public_key}
    )


def test_forged_entry_claiming_the_owners_key_is_caught(log_path):
    lines = lines_of(log_path)
    last = json.loads(lines[-1])
    lines.append(dump(forged_entry(last, MALLORY, key_hex=last["key"])))
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.BAD_SIGNATURE, len(lines))


def test_whole_log_signed_by_someone_else_fails_against_key_or_roster(tmp_path):
    path = tmp_path / "m.jsonl"
    write_demo_log(path, MALLORY)
    assert verify_log(path).ok  # self-consistent …
    check_first_bad(path, ProblemKind.UNTRUSTED_KEY, 1, public_key=ALICE.public_key)
    roster = {ALICE.peer_id: ALICE.public_key, MALLORY.peer_id: ALICE.public_key}
    check_first_bad(path, ProblemKind.UNTRUSTED_KEY, 1, members=roster)


def test_signer_field_not_matching_key_is_caught(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[2])
    e["signer"] = MALLORY.peer_id
    lines[2] = dump(e)
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.SIGNER_MISMATCH, 3)


def test_torn_last_line_and_empty_log(log_path, tmp_path):
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-30])
    report = verify_log(log_path)
    assert report.problem.kind == ProblemKind.TORN
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert verify_log(empty).problem.kind == ProblemKind.EMPTY


def test_reopening_continues_the_chain(log_path):
    before = len(lines_of(log_path))
    with AuditLog(log_path, ALICE, salt=SALT, clock=FakeClock()) as log:
        assert log.next_seq == before
        log.daemon_start(software_version="0.1.0", consortium="demo")
    assert verify_log(log_path).entries == before + 1


def test_reopening_a_broken_log_is_refused(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[3])
    e["ts"] += 100
    lines[3] = dump(e)
    write_lines(log_path, lines)
    with pytest.raises(IntegrityError, match=r"refusing to append.*line 5.*chain-break"):
        AuditLog(log_path, ALICE, salt=SALT)


def test_reopening_with_a_tampered_last_entry_is_refused(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[-1])
    e["body"]["reason"] = "crash"
    lines[-1] = dump(e)
    write_lines(log_path, lines)
    with pytest.raises(IntegrityError, match="bad-signature"):
        AuditLog(log_path, ALICE, salt=SALT)


def test_reopening_someone_elses_log_is_refused(log_path):
    with pytest.raises(IntegrityError, match="not by this node"):
        AuditLog(log_path, MALLORY, salt=SALT)


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    with AuditLog(path, ALICE, salt=SALT), pytest.raises(LocalError, match="another process"):
        AuditLog(path, ALICE, salt=SALT)


def test_bad_salt_and_unopenable_path():
    with pytest.raises(ConfigError, match="salt"):
        AuditLog("/nonexistent/x", ALICE, salt=b"short")
    with pytest.raises(ConfigError, match="cannot open audit log /nonexistent/x: No such file"):
        AuditLog("/nonexistent/x", ALICE, salt=SALT)


def test_closed_log_and_non_finite_values(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", ALICE, salt=SALT)
    entry = log.dp(
        1,
        noise_multiplier=0.0,
        clip_norm=1.0,
        sample_rate=1.0,
        delta=1e-5,
        epsilon=float("inf"),
        accountant="rdp",
    )
    assert entry["body"]["epsilon"] == "inf"
    with pytest.raises(LocalError, match="NaN"):
        log.round_end(1, outcome="completed", duration_s=float("nan"), participants=1)
    with pytest.raises(LocalError, match="64 hex"):
        log.model_version(1, model_hash="abc", parent_hash=None)
    log.close()
    with pytest.raises(LocalError, match="closed"):
        log.daemon_stop()
    assert verify_log(tmp_path / "a.jsonl").entries == 1


def test_concurrent_appends_from_threads_stay_ordered(tmp_path):
    path = tmp_path / "a.jsonl"
    with AuditLog(path, ALICE, salt=SALT) as log:

        def work():
            for _ in range(10):
                log.daemon_stop(reason="t")

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify_log(path).entries == 30


def test_semantically_equal_rewrite_is_caught(log_path):
    lines = lines_of(log_path)
    e = json.loads(lines[2])
    lines[2] = json.dumps(e, sort_keys=True).encode() + b"\n"  # spaces after separators
    write_lines(log_path, lines)
    report = check_first_bad(log_path, ProblemKind.MALFORMED, 3)
    assert "canonical form" in report.problem.message
    lines[2] = dump({**e, "sig": e["sig"].upper()})  # same bytes, other spelling
    write_lines(log_path, lines)
    check_first_bad(log_path, ProblemKind.BAD_SIGNATURE, 3)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_any_single_byte_change_is_caught(demo_log_bytes, tmp_path, position, flip):
    data = bytearray(demo_log_bytes)
    i = int(position * len(data))
    data[i] ^= flip
    path = tmp_path / "flipped.jsonl"
    path.write_bytes(bytes(data))
    report = verify_log(path, public_key=ALICE.public_key)
    assert not report.ok
    assert report.problem.line <= data[: i + 1].count(b"\n") + 1


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_deletion_or_swap_before_the_tail_is_caught(demo_log_bytes, tmp_path, data):
    lines = demo_log_bytes.splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 2))
    if data.draw(st.booleans()):
        del lines[i]
    else:
        j = data.draw(st.integers(i + 1, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    path = tmp_path / "edited.jsonl"
    path.write_bytes(b"".join(lines))
    report = verify_log(path)
    assert not report.ok and report.problem.line == i + 1


def test_cutting_the_tail_is_not_visible_in_one_log_but_in_compare(log_path, tmp_path):
    # Documented limit: a log cut after a complete entry is a valid shorter log.
    full = verify_log(log_path)
    write_lines(log_path, lines_of(log_path)[:-7])
    short = verify_log(log_path)
    assert short.ok and short.entries == full.entries - 7 and short.head != full.head
    other = tmp_path / "other.jsonl"
    write_demo_log(other, make_signer(b"o" * 32))
    assert compare_logs([log_path, other]).missing == {str(log_path): [3]}


def test_peer_id_matches_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    pk = Ed25519PublicKey.from_bytes(ALICE.public_key)
    assert peer_id_from_public_key(ALICE.public_key) == ID.from_pubkey(pk).to_base58()


# --- compare ------------------------------------------------------------------------


def test_compare_agreeing_logs(tmp_path):
    paths = []
    for i, seed in enumerate((b"1", b"2", b"3")):
        p = tmp_path / f"n{i}.jsonl"
        write_demo_log(p, make_signer(seed * 32))
        paths.append(p)
    report = compare_logs(paths)
    assert report.ok and report.rounds == 3 and report.agreed == 3
    assert report.missing == {}


def test_compare_names_first_disagreement_and_missing_rounds(tmp_path):
    a, b, c = (tmp_path / f"{x}.jsonl" for x in "abc")
    write_demo_log(a, make_signer(b"1" * 32), rounds=4)
    write_demo_log(b, make_signer(b"2" * 32), rounds=4, variant={3: "evil", 4: "evil"})
    write_demo_log(c, make_signer(b"3" * 32), rounds=2)
    report = compare_logs([a, b, c])
    assert not report.ok
    first = report.first_disagreement
    assert first.round == 3
    assert first.hashes == {model_hash_for(3): [str(a)], model_hash_for(3, "evil"): [str(b)]}
    assert [d.round for d in report.disagreements] == [3, 4]
    assert report.missing == {str(c): [3, 4]}
    assert report.agreed == 2


def test_compare_missing_rounds_alone_are_not_disagreement(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_demo_log(a, make_signer(b"1" * 32), rounds=3)
    write_demo_log(b, make_signer(b"2" * 32), rounds=1)
    report = compare_logs([a, b])
    assert report.ok and report.missing == {str(b): [2, 3]}


def test_compare_reports_a_tampered_log_as_unverified(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_demo_log(a, make_signer(b"1" * 32))
    write_demo_log(b, make_signer(b"2" * 32))
    write_lines(b, lines_of(b)[:3] + lines_of(b)[5:])
    report = compare_logs([a, b])
    assert not report.ok and str(b) in report.unverified
    with pytest.raises(ConfigError, match="at least two"):
        compare_logs([a])

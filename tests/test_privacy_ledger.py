import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import BudgetExceededError, ConfigError, DataError, IntegrityError, LocalError
from p2pfed.privacy import RDPAccountant, epsilon_for
from p2pfed.privacy.ledger import PrivacyLedger, Release
from p2pfed.privacy.mechanisms import NoiseMode
from p2pfed.privacy.release import PrivateReleaser


def _release(rnd: int, sigma: float = 1.0, q: float = 1.0, steps: int = 1) -> Release:
    return Release(
        round=rnd,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        clip_norm=1.0,
        mode=NoiseMode.LOCAL,
    )


def _fake_clock() -> float:
    return 1_800_000_000.0


def test_records_survive_reopen_and_epsilon_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, 50.0, 1e-5, "pld", clock=_fake_clock) as led:
        assert led.spent_epsilon() == 0.0
        rec = led.reserve(_release(0, 2.0))
        assert rec.seq == 1 and rec.timestamp == _fake_clock()
        led.reserve(_release(1, 1.5, q=0.1, steps=20))
        spent = led.spent_epsilon()
    with PrivacyLedger(path, 50.0, 1e-5, "pld") as again:
        assert [r.release for r in again.records] == [_release(0, 2.0), _release(1, 1.5, 0.1, 20)]
        assert again.spent_epsilon() == pytest.approx(spent, rel=1e-12)
        assert again.remaining_epsilon() == pytest.approx(50.0 - spent)
    with PrivacyLedger(path, 50.0, 1e-5, "rdp") as as_rdp:  # the same records, another accountant
        assert as_rdp.spent_epsilon() > spent
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""  # header, two records, final newline


def test_budget_refusal_names_spent_budget_and_request(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, 3.0, 1e-5, "rdp") as led:
        n = led.rounds_left(4.0, 1.0, 1)
        assert n > 1
        for r in range(n):
            led.reserve(_release(r, 4.0))
        size = path.stat().st_size
        with pytest.raises(
            BudgetExceededError,
            match=r"round 99 .*σ=4.*would raise ε from .* to .* budget of 3 \(rdp",
        ):
            led.reserve(_release(99, 4.0))
        assert path.stat().st_size == size  # nothing written
        assert led.spent_epsilon() <= 3.0
        assert led.rounds_left(4.0, 1.0, 1) == 0


def test_bad_release_and_budget_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ε \(epsilon\) must be > 0"):
        PrivacyLedger(tmp_path / "a", 0.0, 1e-5)
    with pytest.raises(ConfigError, match=r"δ \(delta\) must lie in"):
        PrivacyLedger(tmp_path / "a", 1.0, 1.0)
    with pytest.raises(ConfigError, match="σ must be > 0"):
        _release(0, sigma=-1.0)
    with pytest.raises(ConfigError, match="round must be ≥ 0"):
        _release(-1)
    with pytest.raises(ValueError, match="'central'"):
        Release(0, 1.0, 1.0, 1, 1.0, "central")  # type: ignore[arg-type]


def _write_three(path: Path) -> None:
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        for r in range(3):
            led.reserve(_release(r, 2.0))


def test_corrupted_middle_record_stops_and_is_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    data = bytearray(path.read_bytes())
    lines = data.split(b"\n")
    offset = len(lines[0]) + 1 + len(lines[1]) - 5
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="line 2 fails its checksum"):
        PrivacyLedger(path, 100.0, 1e-5, "rdp")
    assert path.read_bytes() == bytes(data)  # untouched


def test_missing_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], lines[1], lines[3], b""]))
    with pytest.raises(IntegrityError, match="line 3 breaks the hash chain"):
        PrivacyLedger(path, 100.0, 1e-5, "rdp")


def test_empty_or_foreign_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(IntegrityError, match="no complete header"):
        PrivacyLedger(empty, 1.0, 1e-5)
    other = tmp_path / "other.jsonl"
    other.write_text("hello world\n")
    with pytest.raises(IntegrityError, match="line 1"):
        PrivacyLedger(other, 1.0, 1e-5)


def test_torn_partial_tail_is_set_aside_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    whole = path.read_bytes()
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        eps3 = led.spent_epsilon()
        led.reserve(_release(3, 2.0))
    fourth = path.read_bytes()[len(whole) :]
    torn = fourth[: len(fourth) // 2]
    path.write_bytes(whole + torn)  # a crash inside write: half a line, no newline
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        assert led.torn_tail == torn
        assert len(led.records) == 3
        assert led.spent_epsilon() == pytest.approx(eps3)
        led.reserve(_release(3, 2.0))  # appends cleanly after the repair
    assert (tmp_path / "ledger.jsonl.torn").read_bytes() == torn + b"\n"
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        assert led.torn_tail is None and len(led.records) == 4


def test_complete_tail_without_newline_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    path.write_bytes(path.read_bytes()[:-1])
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        assert len(led.records) == 3 and led.torn_tail is None
    assert path.read_bytes().endswith(b"\n")


def test_second_process_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with (
        PrivacyLedger(path, 1.0, 1e-5, "rdp"),
        pytest.raises(LocalError, match="in use by another process"),
    ):
        PrivacyLedger(path, 1.0, 1e-5, "rdp")
    PrivacyLedger(path, 1.0, 1e-5, "rdp").close()


def test_releaser_records_before_returning_and_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, 5.0, 1e-5, "rdp") as led:
        rel = PrivateReleaser(
            led,
            clip_norm=1.0,
            noise_multiplier=3.0,
            mode=NoiseMode.DISTRIBUTED,
            n_peers=4,
            rng=np.random.default_rng(0),
        )
        out = rel.release(0, np.full(10_000, 5.0))
        assert len(led.records) == 1
        assert float(np.std(out)) == pytest.approx(3.0 / 2, rel=0.03)
        bad = np.ones(10)
        bad[0] = np.nan
        with pytest.raises(DataError):
            rel.release(1, bad)
        assert len(led.records) == 1
        with pytest.raises(BudgetExceededError):
            for r in range(1, 1000):
                rel.release(r, np.ones(10))
        assert led.spent_epsilon() <= 5.0
        sgd = PrivateReleaser(led, clip_norm=1.0, noise_multiplier=3.0, mode=NoiseMode.DP_SGD)
        with pytest.raises(BudgetExceededError):
            sgd.release(5000, np.ones(3), sample_rate=0.5, steps=100)


CHILD = r"""
import json, os, signal, sys
from p2pfed import durable
from p2pfed.privacy.ledger import PrivacyLedger, Release
path, released, point, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real_fsync, seen = os.fsync, [0]

def kill_at(fd):
    # Deterministic crash points, counted in fsyncs of the ledger file itself.
    target = os.readlink(f"/proc/self/fd/{fd}")
    if point == "repair" and os.path.basename(target).startswith("."):
        os.kill(os.getpid(), signal.SIGKILL)  # inside the repair's atomic rewrite
    if target != os.path.realpath(path):
        return real_fsync(fd)
    seen[0] += 1
    if seen[0] == n and point == "torn":  # power cut between write and fsync: half a line
        size = os.fstat(fd).st_size
        with open(path, "rb") as f:
            data = f.read()
        last = data.rindex(b"\n", 0, size - 1) + 1
        os.truncate(path, last + (size - last) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
    if seen[0] == n and point == "after-fsync":  # durable, but reserve has not returned
        os.kill(os.getpid(), signal.SIGKILL)

durable.set_fsync(kill_at)
led = PrivacyLedger(path, 1e9, 1e-5, "rdp")
rnd, charges = len(led.records), 0
while True:
    rel = Release(round=rnd, noise_multiplier=[0.8, 1.0, 2.0][rnd % 3],
                  sample_rate=[0.01, 0.2, 1.0][rnd % 3], steps=1 + rnd % 7,
                  clip_norm=1.0, mode="local")
    led.reserve(rel)
    # only now may the update leave; record that it did (one small write: not torn by a kill)
    line = json.dumps([rel.round, rel.noise_multiplier, rel.sample_rate, rel.steps]) + "\n"
    fd = os.open(released, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)
    charges += 1
    if point == "after-charges" and charges == n:  # killed after n whole charges
        os.kill(os.getpid(), signal.SIGKILL)
    rnd += 1
"""

# (kill point, n): each child is killed by itself at that point, never after a sleep
KILLS = [
    ("after-charges", 3),
    ("after-fsync", 2),
    ("torn", 2),
    ("repair", 1),
    ("after-charges", 2),
    ("torn", 1),
    ("repair", 1),
    ("after-fsync", 1),
    ("after-charges", 1),
]


@pytest.mark.slow
def test_sigkill_at_deterministic_points_never_undercounts(tmp_path: Path) -> None:
    path, released = tmp_path / "ledger.jsonl", tmp_path / "released.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    total = unreleased = 0
    for point, n in KILLS:
        unreleased += point == "after-fsync"  # durable records whose update never left
        before = len(released.read_text().splitlines()) if released.exists() else 0
        ledger_before = path.read_bytes() if path.exists() else b""
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(released), point, str(n)],
            env=env,
            timeout=60,
            capture_output=True,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        done = (
            [json.loads(x) for x in released.read_text().splitlines()] if released.exists() else []
        )
        left = len(done) - before
        assert left == {"after-charges": n, "after-fsync": n - 1, "torn": n - 1}.get(point, 0)
        # read-only: a torn tail stays for the next child (the "repair" kill point)
        with PrivacyLedger(path, 1e9, 1e-5, "rdp", read_only=True) as led:
            recorded = {r.release.round: r.release for r in led.records}
            for rnd, sigma, q, steps in done:  # every release that left is in the ledger
                assert recorded[rnd] == Release(rnd, sigma, q, steps, 1.0, NoiseMode.LOCAL)
            truth = RDPAccountant()
            for _, sigma, q, steps in done:
                truth.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
            assert led.spent_epsilon() >= truth.get_epsilon(1e-5)
            # a torn line is never counted; a durable one whose reserve never returned is
            assert len(led.records) == len(done) + unreleased
            if point == "repair":  # killed inside the rewrite: the torn file is intact
                assert led.torn_tail is not None and path.read_bytes() == ledger_before
        total = len(done)
    assert total >= 8  # the children really released between kills


def _recording_fsync(events: list[tuple[str, int]]):  # type: ignore[no-untyped-def]
    def hook(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_size))
        os.fsync(fd)

    return hook


def test_reserve_writes_then_fsyncs_then_returns(tmp_path: Path) -> None:
    from p2pfed import durable

    path = tmp_path / "ledger.jsonl"
    events: list[tuple[str, int]] = []
    with PrivacyLedger(path, 10.0, 1e-5, "rdp") as led:
        previous = durable.set_fsync(_recording_fsync(events))
        try:
            led.reserve(_release(0))
            events.append(("returned", path.stat().st_size))
        finally:
            durable.set_fsync(previous)
    size = path.stat().st_size
    # the whole line was written before the fsync, and reserve returned only after it
    assert events == [("fsync", size), ("returned", size)]


def test_a_failing_fsync_refuses_the_release_and_closes_the_ledger(tmp_path: Path) -> None:
    from p2pfed import durable

    path = tmp_path / "ledger.jsonl"

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with PrivacyLedger(path, 10.0, 1e-5, "rdp") as led:
        led.reserve(_release(0))
        previous = durable.set_fsync(broken)
        try:
            with pytest.raises(LocalError, match="round 1 could not be made durable"):
                led.reserve(_release(1))
        finally:
            durable.set_fsync(previous)
        assert len(led.records) == 1  # not reported as recorded: the update never left
        with pytest.raises(LocalError, match="closed"):
            led.reserve(_release(2))
    with PrivacyLedger(path, 10.0, 1e-5, "rdp") as again:
        assert len(again.records) == 2  # the line did land: counted, never undercounted


def test_ledger_pld_matches_plain_accountant(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l", 100.0, 1e-6, "pld") as led:
        for r in range(5):
            led.reserve(_release(r, 3.0))
        assert led.spent_epsilon() == pytest.approx(epsilon_for(3.0, 1e-6, 1.0, 5, "pld"), rel=1e-9)


def test_every_truncation_of_the_last_record_is_handled(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        led.reserve(_release(3, 2.0))
    full = path.read_bytes()
    last_start = full.rindex(b"\n", 0, len(full) - 1) + 1
    cuts = sorted({*range(last_start, len(full) + 1, 9), len(full) - 2, len(full) - 1, len(full)})
    for cut in cuts:
        path.write_bytes(full[:cut])
        (tmp_path / "ledger.jsonl.torn").unlink(missing_ok=True)
        with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
            # only the whole record (with or without its newline) counts as the 4th
            assert len(led.records) == (4 if cut >= len(full) - 1 else 3)
        repaired = path.read_bytes()
        if cut in (last_start, len(full)):
            assert repaired == full[:cut]  # ends in a whole line: nothing to repair
            continue
        # repaired to the whole records plus one chained note recording the repair
        base = full if cut == len(full) - 1 else full[:last_start]
        assert repaired.startswith(base)
        note = json.loads(repaired[len(base) :].split(b" ", 1)[1])
        assert note["type"] == "repair" and note["after_seq"] == len(led.records)
        with PrivacyLedger(path, 100.0, 1e-5, "rdp") as again:
            assert again.torn_tail is None and len(again.records) == len(led.records)


def test_numpy_scalars_are_recorded_as_plain_numbers(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with PrivacyLedger(path, 10.0, 1e-5, "rdp") as led:
        led.reserve(
            Release(
                np.int64(3), np.float32(2.0), np.float64(0.5), np.int32(4), np.float64(1), "local"
            )
        )  # type: ignore[arg-type]
    with PrivacyLedger(path, 10.0, 1e-5, "rdp") as led:
        assert led.records[0].release == _release(3, 2.0, 0.5, 4)
        assert type(led.records[0].release.round) is int


def test_an_edited_record_with_a_valid_checksum_breaks_the_chain(tmp_path: Path) -> None:
    """The attack the checksum alone misses: rewrite record 1 to a tiny ε, re-checksum it."""
    import hashlib

    path = tmp_path / "ledger.jsonl"
    _write_three(path)
    with PrivacyLedger(path, 100.0, 1e-5, "rdp") as led:
        honest = led.spent_epsilon()
    lines = path.read_bytes().split(b"\n")
    body = json.loads(lines[1].split(b" ", 1)[1])
    body["noise_multiplier"] = 500.0  # ε of this release ~ 0
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    lines[1] = hashlib.sha256(payload).hexdigest()[:32].encode() + b" " + payload
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(IntegrityError, match="line 3 breaks the hash chain"):
        PrivacyLedger(path, 100.0, 1e-5, "rdp")
    with pytest.raises(IntegrityError):  # nor does a report open it with the lower ε
        PrivacyLedger(path, 100.0, 1e-5, "rdp", read_only=True)
    assert honest > 0


_sigmas = st.sampled_from([0.8, 1.0, 2.0, 5.0])


@settings(max_examples=40, deadline=None)
@given(
    sigmas=st.lists(_sigmas, min_size=2, max_size=6),
    where=st.floats(0.0, 1.0, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_chain_round_trips_and_any_flip_before_the_last_record_is_refused(
    tmp_path_factory: pytest.TempPathFactory, sigmas: list[float], where: float, bit: int
) -> None:
    from p2pfed.privacy.ledger_format import LedgerRecord, encode_records, header_line

    path = tmp_path_factory.mktemp("chain") / "ledger.jsonl"
    records = [LedgerRecord(i, 1.0, _release(i, s)) for i, s in enumerate(sigmas, start=1)]
    data = encode_records(header_line(), records)
    path.write_bytes(data)
    with PrivacyLedger(path, 1e6, 1e-5, "rdp", read_only=True) as led:
        assert [r.release for r in led.records] == [r.release for r in records]
        head = led.head()
    # the anchored head is the same as the one a fresh writer computes
    assert head.seq == len(sigmas) and len(head.chain) == 64
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    offset = int(where * last_start)  # any byte of the header or a non-last record
    flipped = bytearray(data)
    flipped[offset] ^= 1 << bit
    path.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError):
        PrivacyLedger(path, 1e6, 1e-5, "rdp", read_only=True)

"""Secure aggregation's survivor floor over real daemons on 127.0.0.1."""

import re
import signal
import time
from pathlib import Path

import pytest

from p2pfed.consortium import launch, stop
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium
from tests.governance_helpers import whole_entries

pytestmark = [pytest.mark.network, pytest.mark.slow]


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.timeout(420)
def test_three_daemons_one_killed_the_two_never_unmask_a_sum_of_two(tmp_path: Path) -> None:
    """Two survivors of three abort every round before any reveal, then resume with three."""
    # Rounds to spare: each round missed for the floor uses a number (24 s apiece under load),
    # and the restarted member needs one or two of its own before it is back in step. With 6
    # a loaded CI run ran out of rounds before the three met again.
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=30))
    for h in c.hospitals:
        # Shorter stage deadlines (6 s) keep the floor aborts quick; shorter still and a
        # loaded machine misses the key exchange itself (seen once in CI at 3 s).
        text = h.config.read_text()
        assert "round_timeout_s = 60.0" in text
        h.config.write_text(text.replace("round_timeout_s = 60.0", "round_timeout_s = 24.0"))
    victim, survivors = c.hospitals[0], c.hospitals[1:]

    def logs(h) -> str:
        return (h.folder / "daemon.log").read_text(errors="replace")

    try:
        launch(c)
        wait_for(
            lambda: all(
                (read_status(h.state) or {}).get("completed_round", -1) >= 1 for h in c.hospitals
            ),
            "round 1 at every daemon",
            timeout=180,
        )
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        committed = {h.folder.name: read_status(h.state)["completed_round"] for h in survivors}
        # Each survivor misses a round for the floor, with nothing revealed ...
        # Two ways to miss for the floor, both before anything is unmasked: the key
        # advertisements close with two keys (the victim died before advertising), or its
        # keys were in and recovery refuses a sum of two (it died after).
        # Counted per round missed (a waiting line repeats the reason).
        floor = re.compile(
            r"round (\d+) missed \([^\n]*?(?:only 2 peers advertised keys, a sum needs 3"
            r"|at least 3 are needed \(min_contributors 3)"
        )
        wait_for(
            lambda: all(len(set(floor.findall(logs(h)))) >= 2 for h in survivors),
            "two rounds missed for the floor at each survivor",
        )
        for h in survivors:
            if "at least 3 are needed" in logs(h):
                assert "nothing was revealed" in logs(h)
            # ... and commits nothing while only two members are up (a round already
            # in flight with all three may still have committed).
            now = read_status(h.state)["completed_round"]
            assert now <= committed[h.folder.name] + 1
            assert not re.search(r"committed: .*, 2 contributors", logs(h))
        launch(c, [victim])
        # ... and resume with three: a round after the floor aborts commits at every member
        # with all three in it (the restarted one included).
        after = max(committed.values()) + 1
        wait_for(
            lambda: bool(set.intersection(*(full_rounds(h, after) for h in c.hospitals))),
            "a round with all three committed at every member after the restart",
            timeout=240,
        )
    finally:
        stop(c)
    # The restarted member took the others' round number and slot from their status at
    # start-up (CatchUp.join_in_step), instead of a round of its own to learn it.
    assert re.search(r"the others retry round \d+ in [\d.]+ s; joining them", logs(victim))
    resumed = min(set.intersection(*(full_rounds(h, after) for h in c.hospitals)))
    digests = {model_hashes(h)[resumed] for h in c.hospitals}
    assert len(digests) == 1, (resumed, digests)


def full_rounds(h, after: int) -> set[int]:
    """Rounds after ``after`` that ``h`` logged as committed with 3 contributors."""
    text = (h.folder / "daemon.log").read_text(errors="replace")
    found = re.findall(r"round (\d+) committed: [^\n]*, 3 contributors", text)
    return {int(r) for r in found if int(r) > after}


def model_hashes(h) -> dict[int, str]:
    """Round → the model hash ``h`` audited for it."""
    return {
        e["body"]["round"]: e["body"]["model_hash"]
        for e in whole_entries(h.state)
        if e["kind"] == "model_version"
    }

"""Issue 21 acceptance (a): a rolling roster renewal across 4 real daemons while training."""

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from p2pfed.consortium import Hospital, launch, stop
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.identity import Identity, Roster
from tests.governance_helpers import whole_entries
from tests.test_daemon_roster import status, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROUND_TIMEOUT = 20.0


def completed(h: Hospital) -> int:
    return int(status(h).get("completed_round", -1))


def back(h: Hospital, before: int, version: int) -> bool:
    """Restarted on ``version`` and committing rounds after ``before`` again."""
    now = status(h)
    return (
        now.get("roster_version") == version
        and now.get("state") == "running"
        and (completed(h) > before)
    )


def committed_under(h: Hospital) -> dict[int, int]:
    """Round → roster version, for each round this member committed (a model version)."""
    versions: dict[int, int] = {}
    out: dict[int, int] = {}
    for e in whole_entries(h.state):
        if e["kind"] == "round_start":
            versions[e["body"]["round"]] = e["body"]["roster_version"]
        elif e["kind"] == "model_version":
            out[e["body"]["round"]] = versions[e["body"]["round"]]
    return out


def restart(c: Any, h: Hospital, roster: Roster) -> None:
    """Stop one member (SIGTERM), give it the renewed roster, start it again."""
    process = h.process
    assert process is not None and process.poll() is None, f"{h.name} is not running"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    roster.save(h.folder / "roster.json")
    launch(c, [h])


@pytest.mark.timeout(300)
def test_a_rolling_roster_renewal_keeps_every_round_on_one_version(tmp_path: Path) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=4, rounds=40))
    for h in c.hospitals:
        text = h.config.read_text()
        h.config.write_text(
            text.replace("round_timeout_s = 60.0", f"round_timeout_s = {ROUND_TIMEOUT}")
        )
    admin = Identity.load(c.root / "admin.key")
    v1 = Roster.load(c.hospitals[0].folder / "roster.json")
    v2 = v1.with_expiry(datetime.now(UTC) + timedelta(days=2)).signed_by(admin)
    assert v2.version == v1.version + 1 and v2.members == v1.members
    started = time.monotonic()
    try:
        launch(c)
        wait_for(lambda: all(completed(h) >= 0 for h in c.hospitals), "round 0 everywhere", 120)
        for h in c.hospitals:  # one at a time, while the others train
            before = completed(h)
            restart(c, h, v2)
            wait_for(
                partial(back, h, before, v2.version),
                f"{h.name} back on version {v2.version} and committing",
                120,
            )
        last_restart = max(completed(h) for h in c.hospitals)

        def resumed_by_all() -> bool:
            # Committed, not adopted: a member catching up moves completed_round too.
            commits = [set(committed_under(h)) for h in c.hospitals]
            return any(r > last_restart for r in set.intersection(*commits))

        wait_for(resumed_by_all, "a round after the last restart committed by all four", 120)
    finally:
        stop(c)
    took = time.monotonic() - started
    commits = {h.name: committed_under(h) for h in c.hospitals}
    # No round committed with members on different roster versions.
    for r in sorted(set().union(*commits.values())):
        versions = {v[r] for v in commits.values() if r in v}
        assert len(versions) == 1, f"round {r} committed under roster versions {versions}"
    # Training resumed: a round after the last restart, within three, committed by all four
    # (the member restarted last may adopt a round or two from the others before it is in a
    # cohort again: seen +3 with the suite on both cores, +1 or +2 alone).
    by_all = set.intersection(*(set(v) for v in commits.values()))
    resumed = min(r for r in by_all if r > last_restart)
    assert resumed <= last_restart + 3, (resumed, last_restart)
    assert all(commits[h.name][resumed] == v2.version for h in c.hospitals)
    compare = subprocess.run(
        [sys.executable, "-m", "p2pfed", "audit", "compare", "--roster"]
        + [str(c.hospitals[0].folder / "roster.json")]
        + [str(h.state / "audit.jsonl") for h in c.hospitals],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "OK: 4 logs agree" in compare.stdout
    print(f"rolling renewal of 4 members: {took:.1f} s; resumed at round {resumed}")

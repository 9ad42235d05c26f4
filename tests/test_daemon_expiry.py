"""Roster expiry over real daemons on 127.0.0.1: warned, then stopped, with no ε after it."""

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.consortium import launch, stop
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.identity import Identity, Roster, format_time
from p2pfed.privacy.ledger import PrivacyLedger

pytestmark = [pytest.mark.network, pytest.mark.slow]

VALID_S = 60  # long enough for start-up and a round or more on a busy two-core machine


@pytest.mark.timeout(300)
def test_three_daemons_warn_then_stop_at_expiry_and_spend_nothing_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=300))  # all fit ε
    for h in c.hospitals:  # short stage deadlines keep the round in flight at expiry short
        text = h.config.read_text()
        assert "round_timeout_s = 60.0" in text
        h.config.write_text(text.replace("round_timeout_s = 60.0", "round_timeout_s = 12.0"))
    admin = Identity.load(c.root / "admin.key")
    first = Roster.load(c.hospitals[0].folder / "roster.json")
    expires = datetime.now(UTC) + timedelta(seconds=VALID_S)
    roster = first.with_expiry(expires).signed_by(admin)
    expires = roster.expires_at  # whole seconds, as signed
    for h in c.hospitals:
        roster.save(h.folder / "roster.json")
    try:
        launch(c)
        deadline = time.monotonic() + 240
        while any(h.process is not None and h.process.poll() is None for h in c.hospitals):
            assert time.monotonic() < deadline, "the daemons did not stop after expiry"
            time.sleep(0.5)
    finally:
        stop(c)
    for h in c.hospitals:
        assert h.process is not None and h.process.returncode == 1
        log = (h.folder / "daemon.log").read_text(errors="replace")
        # Warned ahead (under a day left at start), then one sentence at the stop.
        assert f"roster version {roster.version} expires at" in log
        sentence = (
            f"roster version {roster.version} expired at "
            f"{format_time(expires)}: rounds stopped and no further "
            "privacy budget is spent"
        )
        assert sentence in log
        status = read_status(h.state)
        assert status is not None and status["state"] == "roster-expired"
        assert status["stop_reason"].startswith(sentence) and status["roster_warning"]
        # What `p2pfed status` shows the operator.
        capsys.readouterr()
        assert main(["status", "--config", str(h.config)]) == 0
        shown = capsys.readouterr().out
        assert f"stopped because  {sentence}" in shown
        assert f"version {roster.version}, expires {format_time(expires)}; roster" in shown
        stops = [
            json.loads(line)
            for line in (h.state / "audit.jsonl").read_text().splitlines()
            if '"daemon_stop"' in line
        ]
        assert stops[-1]["body"]["reason"].startswith(sentence)
        # Releases before the expiry (rounds ran, committed or not), none after it.
        config = load_config(h.config)
        p = config.privacy
        with PrivacyLedger(
            config.path(p.ledger), p.epsilon_budget, p.delta, config.accountant, read_only=True
        ) as ledger:
            assert ledger.records
            assert max(r.timestamp for r in ledger.records) < expires.timestamp()

"""``log_json``: a real consortium's daemon logs are JSON lines only; lines name round and peer.

The daemon test runs three real daemons on 127.0.0.1 for one round with ``[node] log_json =
true`` and reads each ``daemon.log`` (the process's stdout and stderr together, as a service
manager keeps them). It is marked slow: 94 s measured on a 2-core machine at load average
7.5 (three daemons importing torch and meeting), over the 60 s a test file should add; the other
tests here take well under a second.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import threading
from pathlib import Path

import pytest

from p2pfed.consortium import run_to_end
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.governance.logs import remove_logging, setup_logging


def _logged(json_format: bool, emit: object) -> list[str]:
    out = io.StringIO()
    setup_logging("INFO", json_format=json_format, stream=out)
    try:
        assert callable(emit)
        emit()
    finally:
        remove_logging()
    return out.getvalue().splitlines()


def test_plain_lines_name_the_round_and_peer_the_message_leaves_out() -> None:
    log = logging.getLogger("p2pfed.governance")

    def emit() -> None:
        log.info("round started", extra={"round": 4, "cohort": 3})
        log.warning("peer excluded", extra={"round": 4, "peer": "hospital-b"})
        log.info("round 4 committed", extra={"round": 4})  # already named: not twice
        log.info("daemon stopped", extra={"reason": "finished"})

    lines = _logged(False, emit)
    assert lines[0].endswith("p2pfed.governance: round started (round 4)")
    assert lines[1].endswith("peer excluded (round 4, peer hospital-b)")
    assert lines[2].endswith("round 4 committed")
    assert lines[3].endswith("daemon stopped")


class _Late:
    def __del__(self) -> None:
        raise RuntimeError("closed too late")


def test_stray_errors_from_finalizers_and_threads_are_json_records() -> None:
    def emit() -> None:
        _Late()  # "Exception ignored in …": the interpreter's unraisable hook
        gc.collect()
        thread = threading.Thread(target=lambda: 1 / 0, name="worker")
        thread.start()
        thread.join()

    docs = [json.loads(line) for line in _logged(True, emit)]  # every line is JSON
    assert [d["logger"] for d in docs] == ["p2pfed.uncaught", "p2pfed.uncaught"]
    assert "RuntimeError('closed too late')" in docs[0]["msg"]
    assert docs[1]["msg"].startswith("uncaught error in thread worker: ZeroDivisionError")


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(400)
def test_a_real_consortium_logs_only_json_lines_naming_round_and_peer(tmp_path: Path) -> None:
    consortium = build_consortium(tmp_path / "c", DemoSettings(peers=3, rounds=1))
    for h in consortium.hospitals:
        h.config.write_text(
            h.config.read_text().replace("[node]\n", "[node]\nlog_json = true\n", 1)
        )
    run_to_end(consortium, timeout=300)
    for h in consortium.hospitals:
        lines = (h.folder / "daemon.log").read_text().splitlines()
        docs = []
        for line in lines:
            try:
                docs.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{h.name}'s daemon.log has a line that is not JSON: {line!r}")
        msgs = [d["msg"] for d in docs]
        assert "patients.csv: all 6 data checks passed" in msgs  # run's own lines, as records
        assert f"{h.name}: finished after round 0" in msgs
        rounds = [d for d in docs if d["msg"] in ("round started", "round completed")]
        assert len(rounds) == 2 and all(d["round"] == 0 for d in rounds)
        committed = [d for d in docs if d["msg"].startswith("round 0 committed")]
        assert len(committed) == 1 and committed[0]["round"] == 0
        for d in docs:  # every line about one peer says which, as a key
            if d["msg"].startswith(("waiting for ", "connected to ", "roster exchange with ")):
                assert d.get("peer"), d

"""q8 compression through three real daemons: rounds commit, bytes fall ≥ 3× (same test)."""

import time
from pathlib import Path

import pytest

from p2pfed.consortium import launch, stop, watch
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium

pytestmark = [pytest.mark.network, pytest.mark.slow]


def configure(root: Path, compression: str):  # type: ignore[no-untyped-def]
    c = build_consortium(root, DemoSettings(peers=3, rounds=2))
    for h in c.hospitals:
        text = h.config.read_text()
        text = text.replace('kind = "logistic"', 'kind = "mlp"\nhidden = [128]')
        text = text.replace('mode = "dp-sgd"', 'mode = "off"')
        text = text.replace("[secagg]\n", "[secagg]\nclip_range = 0.5\n")
        text = text.replace('mode = "ring"\n', f'mode = "ring"\ncompression = "{compression}"\n')
        h.config.write_text(text)
    return c


@pytest.mark.timeout(600)
def test_three_daemons_commit_q8_rounds_with_three_times_fewer_ring_bytes(
    tmp_path: Path,
) -> None:
    runs = {name: configure(tmp_path / name, name) for name in ("none", "q8")}
    started = time.monotonic()
    try:
        for c in runs.values():
            launch(c)
        # Six daemons start on two cores: about a minute idle, several under heavy load.
        final = {name: watch(c, timeout=480) for name, c in runs.items()}
    finally:
        for c in runs.values():
            stop(c)
    sent = {}
    for name, c in runs.items():
        assert [s["state"] for s in final[name]] == ["finished"] * 3, final[name]
        assert len({s["model_digest"] for s in final[name]}) == 1  # every member: one model
        statuses = [read_status(h.state) for h in c.hospitals]
        assert all(s["completed_round"] == 1 for s in statuses)
        # The ring's bytes of the last round, as each daemon's stream counters saw them.
        sent[name] = sum(s["last"]["bytes_sent"] for s in statuses)
        assert all(s["last"]["contributors"] == 3 for s in statuses)
    print(f"ring bytes per round, 3 daemons: none {sent['none']}, q8 {sent['q8']}")
    print(f"took {time.monotonic() - started:.0f} s")
    assert sent["none"] >= 3 * sent["q8"]

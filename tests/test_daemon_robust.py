"""Clear gossip with ClippedGossip mixing over real daemons on 127.0.0.1."""

from pathlib import Path

import pytest

from p2pfed.config import load_config
from p2pfed.consortium import run_to_end
from p2pfed.demo import DemoSettings, build_consortium

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_three_daemons_finish_gossip_rounds_with_clipped_mixing(tmp_path: Path) -> None:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=2))
    for h in c.hospitals:
        text = h.config.read_text()
        assert 'mode = "ring"' in text and "[secagg]\nenabled = true" in text
        text = text.replace('mode = "ring"', 'mode = "gossip"\nrobust = "clipped-gossip"')
        text = text.replace("[secagg]\nenabled = true", "[secagg]\nenabled = false")
        h.config.write_text(text.replace("round_timeout_s = 60.0", "round_timeout_s = 12.0"))
        assert load_config(h.config).rounds.robust == "clipped-gossip"
    final = run_to_end(c, timeout=240)
    assert [s["state"] for s in final] == ["finished"] * 3
    assert all(s["completed_round"] == 1 for s in final)

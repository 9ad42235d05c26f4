"""A Byzantine member against clear gossip, through the real services on the memory network.

Nine peers gossip on a 3×3 torus (each mixes four neighbours with weight 1/5). One member
is Byzantine: every round it sends its neighbours a poisoned vector (a huge-norm one, or its
honest value sign-flipped) instead of what it holds. We measure how far the honest peers end
from the honest peers' starting average, in units of their starting spread. Plain gossip is
dragged as far as the attacker likes; ``robust = "clipped-gossip"`` keeps every honest peer
within a small multiple of the spread. The config setting is refused where updates are not
visible (secure gossip, ring mode).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing

import topologies
from p2pfed.collectives.gossip import GossipRound
from p2pfed.collectives.gossip_driver import GossipConfig, GossipService
from p2pfed.collectives.messages import WordType
from p2pfed.config import load_config
from p2pfed.errors import ConfigError, LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.transport import MemoryNetwork

CONSORTIUM = "robust-gossip"
ROUNDS = 6
N = 9
BYZANTINE = "p4"  # the torus centre: four honest peers mix it in
Attack = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
ATTACKS: dict[str, Attack] = {
    "huge-norm": lambda x: np.full_like(x, 1e6),
    "sign-flip": lambda x: -x,
}


async def gossip_with_attacker(robust: str, attack: Attack) -> dict[str, npt.NDArray[Any]]:
    """Run ROUNDS synchronous rounds; the honest peers' final vectors and their start."""
    topo = topologies.build("torus", N)
    rng = np.random.default_rng(7)
    names = [f"p{i}" for i in range(N)]
    # Honest models near a common point (10, 10, ...), as after shared training rounds.
    start = {p: 10.0 + rng.normal(size=16) for p in names}
    config = GossipConfig(chunk_bytes=256, deadline=2.0, timeout=2.0, robust=robust)
    net = MemoryNetwork()
    final: dict[str, npt.NDArray[Any]] = {}
    ready = trio.Event()
    started: set[str] = set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            service = GossipService(transport, CONSORTIUM, names, topo, config=config)
            started.add(me)
            if len(started) == N:
                ready.set()
            await ready.wait()
            x = start[me]
            for t in range(ROUNDS):
                sent = attack(x) if me == BYZANTINE else x
                outcome = await service.sync_round(t, sent)
                assert not outcome.missing
                x = outcome.vector
            final[me] = x
            await trio.sleep(config.deadline)

    async with trio.open_nursery() as nursery:
        for p in names:
            nursery.start_soon(peer, p)
    honest = [p for p in names if p != BYZANTINE]
    final["start-mean"] = np.mean([start[p] for p in honest], axis=0)
    final["start-spread"] = np.array(
        max(np.linalg.norm(start[p] - final["start-mean"]) for p in honest)
    )
    return final


def drift(out: dict[str, npt.NDArray[Any]]) -> float:
    """The farthest honest peer's distance from the honest start average, in spreads."""
    honest = [p for p in out if p.startswith("p") and p != BYZANTINE]
    far = max(float(np.linalg.norm(out[p] - out["start-mean"])) for p in honest)
    return far / float(out["start-spread"])


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_clipped_gossip_keeps_honest_peers_near_the_honest_average(
    attack: str, autojump_clock: trio.testing.MockClock
) -> None:
    plain = drift(await gossip_with_attacker("off", ATTACKS[attack]))
    clipped = drift(await gossip_with_attacker("clipped-gossip", ATTACKS[attack]))
    # What the attacker gets: with plain gossip the honest models are dragged many spreads
    # away (about 7 by the sign flip, 5·10⁵ by the huge vector); with clipping they stay
    # within 1.5 spreads (0.25 measured)
    # (each round a neighbour moves at most W_ij·τ_i, τ_i no farther than an honest peer).
    assert plain > 3.0
    assert clipped < 1.5


async def test_without_an_attacker_clipping_changes_little(
    autojump_clock: trio.testing.MockClock,
) -> None:
    honest: Attack = lambda x: x  # noqa: E731
    plain = await gossip_with_attacker("off", honest)
    clipped = await gossip_with_attacker("clipped-gossip", honest)
    # Both contract towards the average; clipping the farthest neighbour slows it a little.
    assert drift(clipped) < 1.0
    assert drift(plain) < 1.0


def test_a_non_finite_vector_is_refused_in_robust_mixing() -> None:
    mixing = GossipRound(np.zeros(3), 0, {"a": 0.25, "b": 0.25}, 0.5, "clipped-gossip")
    bad = np.array([np.nan, 0.0, 0.0]).tobytes()
    with pytest.raises(RemoteProtocolError, match="non-finite") as info:
        mixing.receive("a", 0, WordType.FLOAT64, bad)
    assert info.value.reason is ReasonCode.NON_FINITE
    assert mixing.receive("b", 0, WordType.FLOAT64, np.ones(3).tobytes()) is False
    np.testing.assert_allclose(mixing.mix(), np.zeros(3))  # one heard: τ = 0, nothing moves


def test_unknown_rules_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="gossip mixing must be one of"):
        GossipConfig(robust="krum")
    with pytest.raises(LocalProtocolError, match="gossip mixing must be one of"):
        GossipRound(np.zeros(3), 0, {"a": 0.5}, 0.5, "median")
    with pytest.raises(LocalProtocolError, match="Byzantine neighbours must be ≥ 0"):
        GossipConfig(robust="clipped-gossip", byzantine_neighbours=-1)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ('[rounds]\nmode = "ring"\nrobust = "clipped-gossip"\n', "clipping needs visible updates"),
        (
            '[rounds]\nmode = "gossip"\nrobust = "clipped-gossip"\n[privacy]\nmode = "local"\n',
            "clipping needs visible updates",
        ),
        ('[rounds]\nmode = "gossip"\nrobust = "trimmed"\n', r"\[rounds\] robust must be one of"),
        ("[rounds]\nbyzantine_neighbours = -1\n", r"\[rounds\] byzantine_neighbours must be ≥ 0"),
    ],
)
def test_the_setting_is_refused_where_updates_are_not_visible(
    tmp_path: Path, extra: str, match: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[node]\nname = "a"\n' + extra)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_the_setting_is_accepted_for_clear_gossip(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[node]\nname = "a"\n[rounds]\nmode = "gossip"\nrobust = "clipped-gossip"\n'
        '[privacy]\nmode = "local"\n[secagg]\nenabled = false\n'
    )
    assert load_config(path).rounds.robust == "clipped-gossip"

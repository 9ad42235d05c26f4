"""The daemon's example-weighted mean: (v·x, v) summed in one (masked) vector, then divided."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import trio
from transport_harness import libp2p_group, seed_for

from p2pfed.collectives.round import RingRound
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.config import load_config
from p2pfed.errors import ConfigError
from p2pfed.identity import Identity
from p2pfed.node import Aggregate, RingAggregator, SecureRingAggregator
from p2pfed.node.aggregators import Aggregator, Missed, examples_weight
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.transport import MemoryNetwork, Transport

D = 12
MAX_EXAMPLES = 1000
#: Training rows per member: unequal, one above max_examples (it counts as max_examples).
EXAMPLES = [8, 60, 300, 5000]


def _updates() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, size=D).astype(np.float32) for _ in EXAMPLES]


def _expected(updates: list[np.ndarray]) -> np.ndarray:
    n = np.minimum(EXAMPLES, MAX_EXAMPLES).astype(np.float64)
    return sum(k * u.astype(np.float64) for k, u in zip(n, updates, strict=True)) / n.sum()


async def _run(
    secure: bool, examples: list[int], transports: list[Transport] | None = None, tag: str = ""
) -> dict[int, Aggregate | Missed]:
    """Every member aggregates its update once; over memory, or over the given transports."""
    if transports is None:
        ids = [Identity.generate() for _ in examples]
    else:
        ids = [Identity.from_seed(seed_for(f"{tag}{i}")) for i in range(len(examples))]
        assert [i.peer_id for i in ids] == [t.local_peer for t in transports]
    keys = {i.peer_id: i.public_key for i in ids}
    peers = sorted(keys)
    net = MemoryNetwork()
    updates = _updates()
    results: dict[int, Aggregate | Missed] = {}
    opened = 0
    ready = trio.Event()

    async def one(k: int) -> None:
        nonlocal opened
        me = ids[k]
        weight = examples_weight(examples[k], MAX_EXAMPLES)
        async with (
            net.open(me.peer_id) if transports is None else nullcontext(transports[k])
        ) as transport:
            signer = Ed25519CohortSigner(me.seed, keys)
            agg: Aggregator
            if secure:
                round_ = SecureRingRound(transport, "w", 1, keys, me, signer, stage_timeout=4.0)
                rng = np.random.default_rng(k)
                agg = SecureRingAggregator(round_, FixedPoint(), len(ids), 3, rng, weight)
            else:
                agg = RingAggregator(RingRound(transport, "w", 1, peers, signer), weight)
            opened += 1
            if opened == len(ids):
                ready.set()
            await ready.wait()
            results[k] = await agg.aggregate(0, updates[k], np.zeros(D, dtype=np.float32))
            await trio.sleep(0.5)  # stay reachable for late messages

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for k in range(len(ids)):
                nursery.start_soon(one, k)
    return results


@pytest.mark.parametrize("secure", [True, False], ids=["secure-ring", "clear-ring"])
async def test_the_committed_mean_is_weighted_by_examples(secure: bool) -> None:
    results = await _run(secure, EXAMPLES)
    means = [r.mean for r in results.values() if isinstance(r, Aggregate)]
    assert len(means) == len(EXAMPLES)
    assert len({m.tobytes() for m in means}) == 1  # every member commits the same mean
    expected = _expected(_updates())
    uniform = np.mean(_updates(), axis=0)
    assert np.abs(means[0] - expected).max() < 1e-4  # fixed-point rounding only
    assert np.abs(expected - uniform).max() > 0.05  # and the weighting mattered


@pytest.mark.network
@pytest.mark.slow
async def test_the_weighted_secure_mean_over_real_libp2p_hosts() -> None:
    """Four libp2p hosts on 127.0.0.1 (Noise, roster-gated): ≈ 27 s at load average 8."""
    async with libp2p_group(len(EXAMPLES), "weighted") as group:
        results = await _run(True, EXAMPLES, group.transports, "weighted")
    means = [r.mean for r in results.values() if isinstance(r, Aggregate)]
    assert len(means) == len(EXAMPLES) and len({m.tobytes() for m in means}) == 1
    assert np.abs(means[0] - _expected(_updates())).max() < 1e-4


async def test_a_sum_without_examples_is_missed_not_divided_by_zero() -> None:
    results = await _run(True, [0, 0, 0, 0])
    assert all(isinstance(r, Missed) and "no examples" in r.reason for r in results.values())


def test_an_example_weight_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="example weight must lie in"):
        SecureRingAggregator(
            SecureRingRound.__new__(SecureRingRound),
            FixedPoint(),
            3,
            2,
            None,
            1.5,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("tables", "match"),
    [
        ('[rounds]\nweighting = "examples"\n', r"needs \[rounds\] mode = ring and \[privacy\]"),
        (
            '[rounds]\nweighting = "examples"\nmode = "gossip"\n[privacy]\nmode = "off"\n'
            "[secagg]\nenabled = false\n",
            r"weighting = \"examples\" needs",
        ),
        ('[rounds]\nweighting = "median"\n', r"\[rounds\] weighting must be one of"),
        ("[rounds]\nmax_examples = 0\n", r"\[rounds\] max_examples must be ≥ 1"),
    ],
)
def test_example_weighting_is_refused_where_it_would_leak(
    tmp_path: Path, tables: str, match: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[node]\nname = "a"\n' + tables)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_example_weighting_with_privacy_off_on_the_ring_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[node]\nname = "a"\n[rounds]\nweighting = "examples"\n[privacy]\nmode = "off"\n'
    )
    assert load_config(path).rounds.weighting == "examples"

"""The simulator's [compression]: EF-SGD for exact means, CHOCO-SGD gossip, refusals, bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sim
from p2pfed.config import load_config
from p2pfed.daemon.prepare import check_compression
from p2pfed.errors import ConfigError
from sim.compression import CompressionSpec, Compressor
from sim.emulate import build, check_emulable
from sim.engine import run_scenario
from sim.overrides import with_overrides
from sim.scenario import Scenario, load_scenario
from sim.specs import preflight

QUICK = {
    "n": 4,
    "rounds": 12,
    "data.name": "breast_cancer",
    "model.name": "mlp",
    "model.hidden": 64,
}


def quick(**overrides: object) -> Scenario:
    return with_overrides(Scenario(), {**QUICK, **overrides})  # type: ignore[dict-item]


def test_exact_error_feedback_sends_the_intended_total_within_one_step() -> None:
    spec = CompressionSpec(scheme="q4", clip=0.5)
    start = torch.zeros(3, 50, dtype=torch.float64)
    members = np.array([True, True, False])
    rng = np.random.default_rng(1)
    updates = [torch.from_numpy(rng.normal(0, 0.01, (3, 50))) for _ in range(100)]
    totals = {}
    for feedback in (True, False):
        squeeze = Compressor(CompressionSpec(spec.scheme, spec.clip, feedback), 3, start, seed=2)
        totals[feedback] = sum(squeeze.exact(start, start + u, members) for u in updates)
    intended = sum(updates)
    step = squeeze.encoder.step
    assert float((totals[True] - intended)[:2].abs().max()) <= step * (1 + 1e-9)
    assert float((totals[False] - intended)[:2].abs().max()) > 3 * step
    # A site outside the sum sends its model unchanged and keeps no residual.
    assert torch.equal(totals[True][2], intended[2])


@pytest.mark.parametrize("algorithm", ["fedavg", "gossip"])
def test_q8_keeps_accuracy_and_cuts_the_bytes(algorithm: str) -> None:
    base = quick(**{"algorithm.name": algorithm, "secagg.enabled": algorithm == "fedavg"})
    plain = run_scenario(base)[-1]
    packed = run_scenario(with_overrides(base, {"compression.scheme": "q8"}))[-1]
    assert abs(packed.accuracy_mean - plain.accuracy_mean) <= 0.01
    # fedavg: 8 + ⌈log2 4⌉ = 10-bit sum words for 32-bit ones (plus the key exchange);
    # gossip: 8-bit differences for 32-bit floats.
    assert packed.bytes_cumulative_mean < plain.bytes_cumulative_mean / 2.8


def test_choco_gossip_reaches_consensus_and_keeps_the_mean() -> None:
    spec = CompressionSpec(scheme="q8", clip=1.0, gamma=0.5)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 0.3, (4, 20)))
    w = torch.full((4, 4), 0.25, dtype=torch.float64)
    squeeze = Compressor(spec, 4, x, seed=0)
    start, mean = x.clone(), x.mean(dim=0)
    assert float((x - mean).abs().max()) > 0.5
    for _ in range(60):
        x = squeeze.choco(w, start, x)
    assert float((x - x.mean(dim=0)).abs().max()) < 0.01  # the spread is gone
    assert float((x.mean(dim=0) - mean).abs().max()) < 1e-9  # W doubly stochastic: mean kept


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"algorithm.name": "scaffold"}, r"needs fedavg, fedprox or gossip"),
        ({"algorithm.name": "fedavg", "secagg.enabled": True, "secagg.real": True}, r"real"),
        ({"algorithm.name": "gossip", "secagg.enabled": True}, r"CHOCO-SGD"),
        ({"compression.clip": 0.0}, r"\[compression\] clip"),
    ],
)
def test_compression_it_cannot_honour_is_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        quick(**{"compression.scheme": "q8", **overrides})


def test_the_shipped_study_scenario_loads_and_off_keeps_old_digests() -> None:
    study = load_scenario(Path(sim.__file__).parent / "scenarios" / "compression_study.toml")
    preflight([study])
    assert study.compression.scheme == "none" and study.secagg.enabled
    assert "compression" not in str(Scenario().digest())
    on = with_overrides(study, {"compression.scheme": "q8"})
    assert on.digest() != study.digest()


def test_emulation_declares_the_scenarios_compression_to_every_daemon(tmp_path: Path) -> None:
    uniform = {"n": 3, "algorithm.name": "fedavg", "algorithm.weighting": "uniform"}
    s = quick(**uniform, **{"compression.scheme": "q8"})
    consortium, _ = build(with_overrides(s, {"compression.clip": 0.3}), tmp_path)
    for h in consortium.hospitals:
        config = load_config(h.config)
        check_compression(config)
        assert config.rounds.compression == "q8" and config.secagg.clip_range == 0.3
    with pytest.raises(ConfigError, match=r"cannot be emulated with \[privacy\] enabled"):
        check_emulable(with_overrides(s, {"privacy.enabled": True}))

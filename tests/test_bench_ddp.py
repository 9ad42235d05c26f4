"""`p2pfed bench ddp` on a tiny case: JSON shape, and wrap/clip counts that are measured."""

import dataclasses
import json

import numpy as np
import pytest

from p2pfed.bench import ddp
from p2pfed.cli import main
from p2pfed.privacy.ddg import DiscreteGaussianEncoder, plan_ddg
from p2pfed.privacy.sampling import ChaChaSource

KEYS = {
    "task",
    "epsilon",
    "delta",
    "no_dp_accuracy",
    "central_accuracy",
    "distributed_accuracy",
    "wraps",
    "noise_clipped",
}


def test_tiny_bench_prints_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "ddp", "--json", "--tasks", "demo", "--rounds", "1", "--repeats", "1"]
    assert main([*argv, "--coordinates", "20000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "ddp" and len(doc["cases"]) == 1
    case = doc["cases"][0]
    assert set(case) >= KEYS and case["task"] == "demo"
    assert case["coordinates"] >= 20000
    assert case["wraps"] == 0 and case["noise_clipped"] == 0
    for key in ("no_dp_accuracy", "central_accuracy", "distributed_accuracy"):
        assert 0.0 <= case[key] <= 1.0


def test_wraps_are_counted_when_the_ring_is_too_small() -> None:
    plan = plan_ddg(
        n_peers=4,
        min_contributors=3,
        collusion=1,
        dimension=50,
        clip_norm=1.0,
        noise_multiplier=1.0,
    )
    # The same grid in a ring far too small for it: the bench must see the sum wrap.
    tiny = dataclasses.replace(plan, scale=2.0**33)
    encoders = [DiscreteGaussianEncoder(tiny, ChaChaSource.from_seed(i)) for i in range(4)]
    counts = ddp.Counts()
    rows = np.full((4, 50), 1 / np.sqrt(50) * 0.999)
    ddp._ring_sum(encoders, rows, counts)
    assert counts.wraps > 0 and counts.coordinates == 200
    ok = [DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(i)) for i in range(4)]
    fresh = ddp.Counts()
    ddp._ring_sum(ok, rows, fresh)
    assert fresh.wraps == 0 and fresh.noise_clipped == 0


def test_unknown_task_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ddp", "--tasks", "mnist", "--repeats", "1"]) == 2
    assert "unknown bench ddp task 'mnist'" in capsys.readouterr().err

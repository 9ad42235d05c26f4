"""The simulator on images: the shipped ``digits_cnn`` scenario (a small CNN on 8×8 digits).

Run small, it learns far above chance (10 classes: 10 %); one round of its vmapped FedAvg
equals a plain per-site loop written here (a fresh ``nn.Module`` per site, ordinary
autograd, the n_k-weighted mean) to 1e-6 in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import sim
from p2pfed.errors import ConfigError
from sim.engine import Simulator
from sim.image_models import digits_cnn
from sim.overrides import with_overrides
from sim.scenario import Scenario
from sim.specs import load_checked

SCENARIO = Path(sim.__file__).parent / "scenarios" / "digits_cnn.toml"


def _shipped(**overrides: object) -> Scenario:
    return with_overrides(load_checked(SCENARIO), overrides)  # type: ignore[arg-type]


def test_the_cnn_scenario_learns_far_above_chance() -> None:
    """25 s at load average 20 on 2 cores (the per-site loop below: 36 s at 8 sites)."""
    sim = Simulator(_shipped(rounds=6))
    start = float(sim.evaluate().accuracy.mean())
    for t in range(6):
        sim.step(t)
    after = sim.evaluate()
    assert after.consensus < 1e-4  # FedAvg: every site holds the global model
    assert float(after.accuracy.mean()) > max(0.4, start + 0.25), (start, after.accuracy.mean())


def test_one_round_equals_a_per_site_loop() -> None:
    steps, lr = 2, 0.1
    scenario = _shipped(
        rounds=1,
        n=8,
        dtype="float64",
        **{
            "partition.alpha": 0.1,
            "training.batch_size": 100_000,  # full batches: the order of rows is irrelevant
            "training.local_steps": steps,
            "training.lr": lr,
        },
    )
    sim = Simulator(scenario)
    start = sim.theta[0].clone()
    x, y = sim.x_train, sim.y_train
    sites = [sim.indices[i, : sim.counts[i]] for i in range(scenario.n)]
    assert len({len(s) for s in sites}) > 2  # unequal sites, so the weights matter
    sim.step(0)

    models, sizes = [], []
    for idx in sites:
        if len(idx) == 0:
            continue
        model = digits_cnn(x.shape[1], sim.dataset.classes).to(torch.float64)
        # A copy: vector_to_parameters makes the parameters views of the vector it is given.
        torch.nn.utils.vector_to_parameters(start.clone(), model.parameters())
        optimiser = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(steps):
            optimiser.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
        models.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach())
        sizes.append(float(len(idx)))
    weights = torch.tensor(sizes, dtype=torch.float64)[:, None]
    expected = (weights * torch.stack(models)).sum(dim=0) / weights.sum()
    assert float((expected - start).abs().max()) > 1e-3  # the round did train
    assert float((sim.theta[0] - expected).abs().max()) <= 1e-6


def test_the_cnn_refuses_images_that_are_not_square() -> None:
    with pytest.raises(ConfigError, match=r"square images .* not 30 pixels"):
        digits_cnn(30, 2)

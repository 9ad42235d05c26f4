"""Every simulator algorithm against a direct per-peer reference written here.

Each reference is a plain Python loop over the sites with ordinary autograd on the same
data, split, partition and initial model (taken from the simulator), following the update
rule that ``sim.algorithms`` / ``sim.engine`` state; full-batch local steps make the minibatch
order irrelevant, so the two must agree to 1e-6 in final loss (float64).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import topologies
from p2pfed.errors import ConfigError
from sim.algorithms import quality_buckets
from sim.engine import Simulator
from sim.overrides import with_overrides
from sim.scenario import Scenario

ROUNDS = 6
STEPS = 3
LR = 0.3
Vector = torch.Tensor


def _scenario(algorithm: str, **extra: object) -> Scenario:
    base: dict[str, object] = {
        "algorithm": algorithm,
        "n": 10,
        "seed": 3,
        "rounds": ROUNDS,
        "dtype": "float64",
        "partition.scheme": "dirichlet",
        "partition.alpha": 0.1,
        "model.init_scale": 0.1,
        "training.batch_size": 10_000,
        "training.local_steps": STEPS,
        "training.lr": LR,
    }
    base.update(extra)
    return with_overrides(Scenario(), base)  # type: ignore[arg-type]


class Reference:
    """The simulator's data and starting point, and plain per-site maths on them."""

    def __init__(self, sim: Simulator) -> None:
        self.x, self.y = sim.x_train, sim.y_train
        self.sites = [sim.indices[i, : sim.counts[i]] for i in range(sim.scenario.n)]
        self.counts = [len(s) for s in self.sites]
        self.start = sim.theta.clone()
        self.features, self.classes = sim.x_train.shape[1], sim.dataset.classes
        self.x_test, self.y_test = sim.x_test, sim.y_test

    def loss(self, theta: Vector, x: Vector, y: Vector) -> Vector:
        cut = self.features * self.classes
        weight = theta[:cut].view(self.classes, self.features)
        return F.cross_entropy(x @ weight.T + theta[cut:], y)

    def grad(self, theta: Vector, i: int, anchor: Vector | None = None, mu: float = 0.0) -> Vector:
        theta = theta.detach().clone().requires_grad_(True)
        idx = self.sites[i]
        loss = self.loss(theta, self.x[idx], self.y[idx])
        if anchor is not None:
            loss = loss + 0.5 * mu * ((theta - anchor) ** 2).sum()
        (g,) = torch.autograd.grad(loss, theta)
        return g

    def local(
        self, theta: Vector, i: int, correction: Vector | None = None, mu: float = 0.0
    ) -> Vector:
        """K full-batch SGD steps of site i from ``theta`` (none for an empty site)."""
        if self.counts[i] == 0:
            return theta.clone()
        y = theta.clone()
        for _ in range(STEPS):
            g = self.grad(y, i, theta if mu > 0 else None, mu)
            y = y - LR * (g if correction is None else g + correction)
        return y

    def mean(self, models: dict[int, Vector], weighting: str = "examples") -> Vector:
        w = {i: float(self.counts[i]) if weighting == "examples" else 1.0 for i in models}
        return sum(w[i] * models[i] for i in models) / sum(w.values())

    def test_loss(self, theta: Vector) -> float:
        return float(self.loss(theta, self.x_test, self.y_test))


def _played(scenario: Scenario) -> tuple[Simulator, Reference, list[np.ndarray]]:
    sim = Simulator(scenario)
    ref = Reference(sim)
    chosen = []
    for t in range(scenario.rounds):
        sim.step(t)
        chosen.append(sim.exact.selected.copy())
    return sim, ref, chosen


def _agree(sim: Simulator, ref: Reference, theta: Vector, row: int = 0) -> None:
    assert abs(ref.test_loss(sim.theta[row]) - ref.test_loss(theta)) <= 1e-6
    assert float((sim.theta[row] - theta).abs().max()) <= 1e-6


def _fedavg(
    ref: Reference, masks: list[np.ndarray], weighting: str = "examples", mu: float = 0.0
) -> Vector:
    x = ref.start[0]
    for mask in masks:
        x = ref.mean({i: ref.local(x, i, mu=mu) for i in np.flatnonzero(mask)}, weighting)
    return x


def _nonempty(ref: Reference) -> np.ndarray:
    return np.array([c > 0 for c in ref.counts])


def test_fedavg_weights_by_examples_and_leaves_empty_sites_out() -> None:
    sim, ref, _ = _played(_scenario("fedavg"))
    assert sim.empty_sites >= 1  # the case has an empty site to leave out
    assert len({c for c in ref.counts if c}) > 2  # and unequal sizes for weights to matter
    expected = _fedavg(ref, [_nonempty(ref)] * ROUNDS)
    _agree(sim, ref, expected)
    assert torch.all(sim.theta == sim.theta[0])  # everyone, empty sites too, got the model
    unweighted = _fedavg(ref, [_nonempty(ref)] * ROUNDS, "uniform")
    assert abs(ref.test_loss(unweighted) - ref.test_loss(expected)) > 1e-4


def test_uniform_weighting_is_the_plain_mean_of_the_sites_with_data() -> None:
    sim, ref, _ = _played(_scenario("fedavg", **{"algorithm.weighting": "uniform"}))
    _agree(sim, ref, _fedavg(ref, [_nonempty(ref)] * ROUNDS, "uniform"))
    with_empty = _fedavg(ref, [np.ones(len(ref.counts), bool)] * ROUNDS, "uniform")
    assert abs(ref.test_loss(with_empty) - ref.test_loss(sim.theta[0])) > 1e-4


def test_fedprox_adds_the_proximal_pull_to_each_local_step() -> None:
    sim, ref, _ = _played(_scenario("fedprox", **{"algorithm.mu": 0.5}))
    _agree(sim, ref, _fedavg(ref, [_nonempty(ref)] * ROUNDS, mu=0.5))


def test_scaffold_corrects_local_steps_with_control_variates() -> None:
    sim, ref, _ = _played(_scenario("scaffold"))
    n = len(ref.counts)
    data = np.flatnonzero(_nonempty(ref))
    x = ref.start[0]
    c_site = [torch.zeros_like(x) for _ in range(n)]
    c = torch.zeros_like(x)
    for _ in range(ROUNDS):
        trained = {int(i): ref.local(x, int(i), correction=c - c_site[i]) for i in data}
        delta_c = torch.zeros_like(x)
        for i, y in trained.items():
            fresh = c_site[i] - c + (x - y) / (STEPS * LR)
            delta_c += fresh - c_site[i]
            c_site[i] = fresh
        c = c + delta_c / len(data)
        x = ref.mean(trained)
    _agree(sim, ref, x)
    assert abs(ref.test_loss(_fedavg(ref, [_nonempty(ref)] * ROUNDS)) - ref.test_loss(x)) > 1e-4
    assert torch.allclose(sim.exact.scaffold.server, c, atol=1e-9)  # type: ignore[union-attr]


def test_local_training_keeps_each_site_to_itself() -> None:
    sim, ref, _ = _played(_scenario("local"))
    xs = ref.start.clone()
    for _ in range(ROUNDS):
        xs = torch.stack([ref.local(xs[i], i) for i in range(len(ref.counts))])
    for i in range(len(ref.counts)):
        _agree(sim, ref, xs[i], row=i)


def _gossip_w(scenario: Scenario, t: int) -> Vector:
    topo = topologies.build(scenario.topology.name, scenario.n)
    return torch.from_numpy(np.asarray(topo.mixing_at(t).todense(), dtype=np.float64))


@pytest.mark.parametrize("topology", ["ring", "complete"])
def test_gossip_mixes_locally_trained_models_with_w(topology: str) -> None:
    scenario = _scenario("gossip", topology=topology)
    sim, ref, _ = _played(scenario)
    xs = ref.start.clone()
    for t in range(ROUNDS):
        trained = torch.stack([ref.local(xs[i], i) for i in range(scenario.n)])
        xs = _gossip_w(scenario, t) @ trained
    for i in range(scenario.n):
        _agree(sim, ref, xs[i], row=i)


def test_gradient_tracking_follows_its_tracker() -> None:
    scenario = _scenario("gradient_tracking", topology="ring")
    sim, ref, _ = _played(scenario)
    n = scenario.n
    xs = ref.start.clone()
    tracker = torch.zeros_like(xs)
    last = torch.zeros_like(xs)
    for t in range(ROUNDS):
        w = _gossip_w(scenario, t)
        direction = last.clone()
        steps = torch.zeros(n, dtype=xs.dtype)
        for i in range(n):
            if ref.counts[i] == 0:
                continue
            z, total = xs[i].clone(), torch.zeros_like(xs[i])
            for _ in range(STEPS):
                g = ref.grad(z, i)
                total += g
                z = z - LR * (g + tracker[i] - last[i])
            direction[i] = total / STEPS
            steps[i] = STEPS
        tracker = w @ tracker + direction - last
        last = direction
        xs = w @ (xs - LR * steps[:, None] * tracker)
    for i in range(n):
        _agree(sim, ref, xs[i], row=i)


def _check_selection(
    extra: dict[str, object], check: Callable[[Reference, Vector, np.ndarray], None]
) -> None:
    sim, ref, masks = _played(_scenario("fedavg", n=16, **extra))
    x = ref.start[0]
    for mask in masks:
        check(ref, x, mask)
        x = ref.mean({int(i): ref.local(x, int(i)) for i in np.flatnonzero(mask)})
    _agree(sim, ref, x)


def test_random_selection_trains_a_fraction_of_the_sites_with_data() -> None:
    def check(ref: Reference, x: Vector, mask: np.ndarray) -> None:
        assert not (mask & ~_nonempty(ref)).any()
        assert mask.sum() == max(1, round(0.5 * _nonempty(ref).sum()))

    _check_selection({"selection.fraction": 0.5}, check)


def test_availability_selection_takes_only_sites_that_are_up() -> None:
    seen: list[int] = []

    def check(ref: Reference, x: Vector, mask: np.ndarray) -> None:
        assert not (mask & ~_nonempty(ref)).any()
        seen.append(int(mask.sum()))

    _check_selection({"selection.mode": "availability", "selection.availability_min": 0.2}, check)
    assert min(seen) < max(seen) <= 16  # availability varies from round to round


def test_quality_selection_takes_the_highest_loss_buckets() -> None:
    def check(ref: Reference, x: Vector, mask: np.ndarray) -> None:
        data = _nonempty(ref)
        losses = torch.tensor(
            [float(ref.loss(x, ref.x[s], ref.y[s])) if len(s) else 0.0 for s in ref.sites]
        )
        buckets = quality_buckets(losses, ref.classes, 4)
        assert mask.sum() == max(1, round(0.25 * data.sum()))
        assert buckets[mask].min() >= buckets[data & ~mask].max()

    _check_selection({"selection.mode": "quality", "selection.fraction": 0.25}, check)


def test_min_examples_redraws_until_every_site_has_data() -> None:
    plain = Simulator(_scenario("fedavg"))
    assert plain.empty_sites >= 1
    redrawn = Simulator(
        _scenario("fedavg", **{"partition.min_examples": 5, "partition.alpha": 0.5})
    )
    assert redrawn.empty_sites == 0 and int(redrawn.counts.min()) >= 5
    with pytest.raises(ConfigError, match="no partition in 100 draws gave every site"):
        Simulator(_scenario("fedavg", **{"partition.min_examples": 5}))
    with pytest.raises(ConfigError, match="min_examples = 50 cannot hold for 10 sites"):
        Simulator(_scenario("fedavg", **{"partition.min_examples": 50}))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"algorithm.weighting": "median"}, r"\[algorithm\] weighting must be examples or"),
        ({"algorithm": "gossip", "selection.fraction": 0.5}, r"\[selection\] mode needs"),
        ({"selection.mode": "best"}, r"\[selection\] mode must be one of"),
        ({"algorithm": "scaffold", "privacy.enabled": True}, "control variate"),
        ({"algorithm": "scaffold", "training.lr": 0.0}, r"\[training\] lr must be > 0"),
    ],
)
def test_bad_algorithm_settings_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _scenario(str(extra.pop("algorithm", "fedavg")), **extra)


def test_empty_sites_are_reported_in_the_result_and_the_summary() -> None:
    from sim.results import RunResult
    from sim.sweep import grid_points, run_point, summary_rows

    scenario = _scenario("fedavg", rounds=1)
    result = run_point(scenario)
    assert result.empty_sites == Simulator(scenario).empty_sites >= 1
    assert RunResult.from_json(result.to_json()).empty_sites == result.empty_sites
    points = grid_points(scenario, [], 1)
    assert summary_rows(points, [result])[0]["empty_sites"] == result.empty_sites


def test_the_shipped_fedavg_scenario_reaches_fedavgs_accuracy() -> None:
    from sim.scenario import load_scenario
    from sim.sweep import run_point

    path = Path(__file__).parent.parent / "sim" / "scenarios" / "fedavg_breast_cancer_256.toml"
    scenario = with_overrides(load_scenario(path), {"eval_every": 20})
    result = run_point(scenario)
    assert result.empty_sites == 64  # the Dirichlet(0.5) split leaves a quarter empty
    assert result.records[-1].accuracy_mean >= 0.94  # FedAvg's ≈ 0.947 on this task


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_the_real_secure_sum_gives_the_exact_weighted_mean(weighting: str) -> None:
    extra = {"n": 8, "rounds": 2, "partition.alpha": 0.5, "algorithm.weighting": weighting}
    exact = Simulator(_scenario("fedavg", **extra))
    exact.run()
    real = Simulator(_scenario("fedavg", **extra, **{"secagg.enabled": True, "secagg.real": True}))
    real.run()
    assert len(set(exact.counts.tolist())) > 2  # unequal sites, so the weighting shows
    # Fixed-point rounding only (grid step 16 / 2^22 per coordinate, divided by Σv ≥ 1).
    assert float((real.theta - exact.theta).abs().max()) < 1e-4


def test_the_study_table_reports_rounds_to_a_share_of_the_final_accuracy() -> None:
    from sim.algorithms_study import pivot, rounds_to
    from sim.sweep import run_point

    result = run_point(_scenario("fedavg", rounds=4))
    accuracies = [r.accuracy_mean for r in result.records]
    reached = rounds_to(result, 0.9)
    assert accuracies[reached] >= 0.9 * accuracies[-1]
    assert all(a < 0.9 * accuracies[-1] for a in accuracies[:reached])
    row = {"method": "m", "topology": "ring", "final_accuracy": 0.5, "worst_site": 0.25}
    rows = [{**row, "alpha": a, "rounds_to_0.9": 2.0} for a in (0.1, 0.5, 1.0)]
    assert "| m | ring | 0.500 / 0.250 / 2.0 | 0.500 / 0.250 / 2.0 |" in pivot(rows)

"""The exact-mean algorithms' rules: weighted FedAvg, SCAFFOLD and client selection.

Theory of operation. Notation: x_i is site i's model at the start of round t, y_i its model
after K_i local SGD steps of rate η on its n_i examples (``Simulator.local_phase``), S_t the
sites that train in round t (``select``), and w_i the site's weight: n_i with
``[algorithm] weighting = "examples"`` (FedAvg, McMahan et al. 2017) or 1 with ``uniform``.
**An empty site (n_i = 0) is never in S**, so it never dilutes a mean (it receives the model).

- ``fedavg``: local step y_i ← y_i − η ∇f_i(y_i); then x ← Σ_{i∈S} w_i y_i / Σ_{i∈S} w_i
  for every site that is up (sites not in S receive the new model too; a dropped-out site
  keeps its own).
- ``fedprox``: as ``fedavg`` with the local loss f_i(y) + (μ/2)‖y − x‖².
- ``scaffold`` (Karimireddy et al. 2020, option II, global step size 1): control variates
  c_i per site and c = mean of the c_i over the non-empty sites (all zero at first). Local
  step y_i ← y_i − η (∇f_i(y_i) − c_i + c); after the round, for i ∈ S with K_i > 0:
  c_i⁺ = c_i − c + (x − y_i)/(K_i η); c ← c + Σ_{i∈S} (c_i⁺ − c_i) / N_data (N_data = number of
  non-empty sites); x ← the weighted mean of the y_i as in ``fedavg``.

Selection (``[selection]``), among the non-empty sites, k = max(1, round(fraction · N_data)):
``all`` draws k uniformly (all of them when fraction = 1, with no random draw);
``availability`` gives site i an availability a_i ~ U[availability_min, 1] once, then each
round keeps those up (probability a_i) and draws up to k of them; ``quality`` has each site
compute its score s_i = mean cross-entropy of its current model on its own training data
and reveal only the bucket q_i = min(B − 1, ⌊s_i · B / (2 ln C)⌋) (B buckets of width
2 ln C / B; ln C is the loss of a uniform guess over C classes), and takes the k highest
buckets, ties broken at random (power-of-choice selection, Cho et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from p2pfed.secagg import FixedPoint, SecAggConfig, run_cohort
from sim.models import FlatModel
from sim.scenario import Scenario, SelectionSpec


def site_weights(counts: torch.Tensor, weighting: str, dtype: torch.dtype) -> torch.Tensor:
    """w_i: n_i (``examples``) or 1 (``uniform``); empty sites are kept out by ``Selector``."""
    if weighting == "examples":
        return counts.to(dtype)
    return torch.ones(len(counts), dtype=dtype)


def weighted_mean(
    sent: torch.Tensor, weights: torch.Tensor, members: torch.Tensor
) -> torch.Tensor | None:
    """Σ_{i∈members} w_i x_i / Σ w_i, or None when no member carries weight."""
    w = torch.where(members, weights, torch.zeros_like(weights))
    total = w.sum()
    if float(total) <= 0.0:
        return None
    return (w[:, None] * sent).sum(dim=0) / total


def exact_mix(
    start: torch.Tensor, mean: torch.Tensor | None, receivers: torch.Tensor
) -> torch.Tensor:
    """Every receiving site takes the mean; the others (and all, without a mean) keep theirs."""
    if mean is None:
        return start
    return torch.where(receivers[:, None], mean[None, :], start)


class Scaffold:
    """SCAFFOLD's control variates: c_i per site (``local``) and their mean c (``server``)."""

    def __init__(self, theta: torch.Tensor, counts: torch.Tensor) -> None:
        self.local = torch.zeros_like(theta)
        self.server = torch.zeros(theta.shape[1], dtype=theta.dtype)
        self.sites_with_data = max(1, int((counts > 0).sum()))

    def correction(self) -> torch.Tensor:
        """What each site adds to its local gradients: c − c_i."""
        return self.server[None, :] - self.local

    def update(
        self,
        start: torch.Tensor,
        trained: torch.Tensor,
        steps: torch.Tensor,
        lr: float,
        members: torch.Tensor,
    ) -> None:
        """c_i⁺ = c_i − c + (x − y_i)/(K_i η) for members that stepped; c moves by their mean."""
        k = steps.to(start.dtype)[:, None].clamp_min(1.0)
        fresh = self.local - self.server[None, :] + (start - trained) / (k * lr)
        moved = (members & (steps > 0))[:, None]
        new_local = torch.where(moved, fresh, self.local)
        self.server = self.server + (new_local - self.local).sum(dim=0) / self.sites_with_data
        self.local = new_local


def site_losses(
    model: FlatModel,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of site i's model on its own training examples (0 if empty)."""
    forward = torch.func.vmap(model.forward, in_dims=(0, 0))
    with torch.no_grad():
        logits = forward(theta, x[indices])  # [N, M, C]
        ce = logits.logsumexp(-1) - logits.gather(-1, y[indices][..., None])[..., 0]
        mask = (torch.arange(indices.shape[1])[None, :] < counts[:, None]).to(theta.dtype)
        return (ce * mask).sum(1) / counts.clamp_min(1).to(theta.dtype)


def quality_buckets(losses: torch.Tensor, classes: int, buckets: int) -> NDArray[np.int64]:
    """The coarse score a site reveals: its loss cut into ``buckets`` bins of 2 ln C / B."""
    width = 2.0 * math.log(classes) / buckets
    raw = np.floor(losses.detach().to(torch.float64).numpy() / width)
    return np.minimum(buckets - 1, raw).astype(np.int64)


class Selector:
    """Chooses the sites that train in a round (see the module docstring)."""

    def __init__(self, spec: SelectionSpec, counts: NDArray[np.int64], rng: np.random.Generator):
        self.spec = spec
        self.rng = rng
        self.eligible = counts > 0
        self.k = max(1, round(spec.fraction * int(self.eligible.sum())))
        self.availability = (
            rng.uniform(spec.availability_min, 1.0, size=len(counts))
            if spec.mode == "availability"
            else None
        )

    @property
    def trivial(self) -> bool:
        """Every non-empty site trains every round (nothing to draw)."""
        return self.spec.mode == "all" and self.spec.fraction == 1.0

    def select(self, buckets: NDArray[np.int64] | None = None) -> NDArray[np.bool_]:
        """This round's sites; ``buckets`` are the revealed quality buckets (``quality``)."""
        candidates = self.eligible.copy()
        if self.trivial:
            return candidates
        if self.availability is not None:
            candidates &= self.rng.random(len(candidates)) < self.availability
        pool = np.flatnonzero(candidates)
        keys = self.rng.random(len(pool))
        # Highest bucket first, ties (and everything without buckets) in random order.
        order = np.argsort(keys) if buckets is None else np.lexsort((keys, -buckets[pool]))
        chosen = np.zeros(len(candidates), dtype=np.bool_)
        chosen[pool[order[: self.k]]] = True
        return chosen


def secure_weighted_mean(
    scenario: Scenario,
    sent: torch.Tensor,
    weights: torch.Tensor,
    members: NDArray[np.bool_],
    t: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor | None, NDArray[np.float64]]:
    """The members' weighted mean computed by p2pfed.secagg's masked-sum protocol.

    With ``examples`` weighting site i sends (v_i x_i, v_i), v_i = w_i / max w ∈ [0, 1], in
    one fixed-point vector, so one masked sum gives both Σ v_i x_i and Σ v_i, and the mean is
    their ratio (the daemon's ``p2pfed.node.aggregators`` rule); ``uniform`` sends x_i and
    divides by the number of contributors. The whole
    protocol runs in process (keys, shares, masks, the masked sum, unmasking). Bytes per
    site are the protocol's encoded messages plus a ring all-reduce of the masked vector,
    2(k-1)/k of its size.
    """
    spec = scenario.secagg
    members_list = [int(i) for i in np.flatnonzero(members)]
    k = len(members_list)
    sent_bytes = np.zeros(scenario.n, dtype=np.float64)
    w = weights.detach().to(torch.float64).numpy()
    top = float(w[members_list].max()) if k else 0.0
    if top <= 0.0:
        return None, sent_bytes
    point = FixedPoint(clip=spec.clip_range, level_bits=spec.level_bits, ring_bits=spec.bits)
    values = sent.detach().to(torch.float64).numpy()
    names = {i: f"peer-{i:05d}" for i in members_list}
    weighted = scenario.algorithm.weighting == "examples"
    vectors = {
        i: np.append(values[i] * w[i] / top, w[i] / top) if weighted else values[i]
        for i in members_list
    }
    inputs = {names[i]: point.encode(vectors[i], rng, peers=k) for i in members_list}
    dimension = values.shape[1] + (1 if weighted else 0)
    config = SecAggConfig(
        consortium=scenario.name, round=t, dimension=dimension, ring_bits=spec.bits
    )
    first = names[members_list[0]]
    run = run_cohort(
        config, inputs, random_seed=int(rng.integers(2**63 - 1)), compute_results={first}
    )
    total = point.decode_sum(run.results[first], len(run.survivors))
    for i in members_list:
        vector = run.vector_bytes.get(names[i], 0)
        sent_bytes[i] = run.bytes_sent[names[i]] + 2 * (k - 1) / k * vector
    if not weighted:
        return torch.from_numpy(total / len(run.survivors)).to(sent.dtype), sent_bytes
    if total[-1] <= len(run.survivors) * point.step:  # Σv within rounding of 0: no examples
        return None, sent_bytes
    mean = total[:-1] / total[-1]
    return torch.from_numpy(mean).to(sent.dtype), sent_bytes


class ExactRounds:
    """State of the exact-mean algorithms: site weights, selection, SCAFFOLD's variates."""

    def __init__(
        self,
        scenario: Scenario,
        counts: NDArray[np.int64],
        theta: torch.Tensor,
        selection_seed: np.random.SeedSequence,
        secagg_rng: np.random.Generator,
    ) -> None:
        self.scenario = scenario
        counts_t = torch.from_numpy(counts)
        self.weights = site_weights(counts_t, scenario.algorithm.weighting, theta.dtype)
        self.selector = Selector(scenario.selection, counts, np.random.default_rng(selection_seed))
        #: The sites selected in the last round (the non-empty ones before the first).
        self.selected = self.selector.eligible
        self.scaffold = Scaffold(theta, counts_t) if scenario.algorithm.name == "scaffold" else None
        self.secagg_rng = secagg_rng

    def select(self, losses: Callable[[], torch.Tensor], classes: int) -> NDArray[np.bool_]:
        """This round's sites; ``losses`` gives each site's local loss (``quality`` only)."""
        spec = self.scenario.selection
        buckets = None
        if spec.mode == "quality":
            buckets = quality_buckets(losses(), classes, spec.buckets)
        self.selected = self.selector.select(buckets)
        return self.selected

    def mix(
        self,
        start: torch.Tensor,
        trained: torch.Tensor,
        sent: torch.Tensor,
        steps: torch.Tensor,
        active: NDArray[np.bool_],
        t: int,
    ) -> tuple[torch.Tensor, NDArray[np.float64] | None]:
        """The sites' new models and, with ``[secagg] real``, the protocol's bytes per site.

        The sites selected this round that are up are the members; every site that is up
        gets their weighted mean (and SCAFFOLD's control variates move first).
        """
        sc = self.scenario
        training = active & self.selected
        members = torch.from_numpy(training)
        if self.scaffold is not None:
            self.scaffold.update(start, trained, steps, sc.training.lr, members)
        real_bytes = None
        if sc.secagg.real:
            rng = self.secagg_rng
            mean, real_bytes = secure_weighted_mean(sc, sent, self.weights, training, t, rng)
        else:
            mean = weighted_mean(sent, self.weights, members)
        return exact_mix(start, mean, torch.from_numpy(active)), real_bytes

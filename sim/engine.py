"""The vectorised simulator: N virtual peers as one ``[N, P]`` parameter tensor.

Theory of operation. Everything random comes from one scenario seed, split with
``numpy.random.SeedSequence`` into independent streams (data split, partition, model init,
minibatches, faults, DP noise, topology), and torch generators are explicit, so a run is
bit-for-bit reproducible on one machine. Every kernel used (gather, index, argsort, CSR
matmul, dense maths) is deterministic on the CPU, so we do not switch on
``torch.use_deterministic_algorithms`` — it costs seconds of imports (torch's compiler stack)
and changes nothing here; a test checks that two runs of one seed give identical bytes.

A round t, for the active (not dropped-out) peers:

1. **Local steps.** Every peer walks a fresh random permutation of its own samples in
   minibatches; all peers step together: ``vmap(grad(loss))`` over the peer dimension, the
   loss being masked cross-entropy (padding and finished peers weigh 0) plus
   FedProx's (μ/2)‖θ − θ_round‖² and weight decay. Peers with fewer steps to do (small data,
   stragglers, dropouts) have their remaining steps masked to no-ops.
2. **Release.** The update Δ_i = θ_i' − θ_i is clipped to L2 ≤ S and noised with N(0, (σS)²)
   when DP is on; a Byzantine peer poisons what it sends (``sim.byzantine``).
3. **Mixing**, by algorithm:

   - ``local``: no communication (baseline);
   - ``gossip`` (D-PSGD, local steps then gossip): X ← W_t X', or ClippedGossip
     (``sim.mixing.clipped_mix``) with ``[algorithm] robust = "clipped-gossip"``;
   - ``fedavg``, ``fedprox``, ``scaffold`` (exact averaging ≡ ring all-reduce): the sites
     selected for the round (all non-empty ones by default) train, and every site that is up
     gets their mean weighted by example count n_k; rules in ``sim.algorithms``;
   - ``gradient_tracking`` (GT-DSGD / DIGing, adapt-then-combine, with local steps): a
     tracker y_i of the network-average gradient corrects the local steps (g + y_i − d_i)
     and moves the model: d_i = mean raw gradient of the round, y ← W y + d − d_prev,
     X ← W(X − Kη y). With K = 1 this is the classical GT update.

Metrics come from ``sim.metrics`` after every ``eval_every`` rounds (and round 0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from sim.algorithms import ExactRounds, site_losses
from sim.byzantine import attack_direction, poison_model, poison_update
from sim.compression import Compressor
from sim.cost import RoundCost, round_cost
from sim.data import SplitData, load_dataset
from sim.fastgrad import batched_grad_and_value
from sim.metrics import Evaluation, Traffic, evaluate, round_record
from sim.mixing import (
    MixingSchedule,
    build_topology,
    gossip_mix,
    receive_counts,
    send_counts,
    to_torch_csr,
    with_faults,
)
from sim.models import FlatModel, default_init_scale, flat_model
from sim.partition import Partition, partition
from sim.privacy import epsilon
from sim.results import RoundRecord
from sim.scenario import EXACT_ALGORITHMS, Scenario

# Appending a stream leaves the earlier ones unchanged (SeedSequence children are keyed by
# their index), so old seeds keep their meaning.
_STREAMS = (
    *("data", "partition", "init", "batches", "faults", "noise", "topology", "secagg"),
    "selection",
    "compression",
)


def _seeds(seed: int) -> dict[str, np.random.SeedSequence]:
    return dict(zip(_STREAMS, np.random.SeedSequence(seed).spawn(len(_STREAMS)), strict=True))


def _torch_generator(seq: np.random.SeedSequence) -> torch.Generator:
    state = seq.generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@dataclasses.dataclass(frozen=True, slots=True)
class LocalResult:
    """What the local phase returns: new parameters and the raw gradient statistics."""

    theta: torch.Tensor
    #: Sum of the raw gradients over the steps (gradient tracking only, else None).
    grad_sum: torch.Tensor | None
    steps_done: torch.Tensor
    loss_mean: torch.Tensor


@dataclasses.dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What one round did: bytes per peer, communication time, who took part, losses."""

    bytes_sent: NDArray[np.float64]
    comm_time_s: float
    active: NDArray[np.bool_]
    steps: torch.Tensor
    loss_mean: torch.Tensor

    def train_loss(self) -> float:
        """Mean local training loss over the peers that made at least one step."""
        trained = torch.from_numpy(self.active) & (self.steps > 0)
        return float(self.loss_mean[trained].mean()) if bool(trained.any()) else math.nan


class Simulator:
    """One scenario's state: data, partition, topology, parameters; ``run`` plays it out."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.dtype = torch.float64 if scenario.dtype == "float64" else torch.float32
        seeds = _seeds(scenario.seed)
        self.dataset: SplitData = load_dataset(scenario.data, np.random.default_rng(seeds["data"]))
        self.partition: Partition = partition(
            scenario.partition,
            self.dataset.train.y,
            scenario.n,
            np.random.default_rng(seeds["partition"]),
            self.dataset.partition,
        )
        self.model: FlatModel = flat_model(
            scenario.model, self.dataset.features, self.dataset.classes
        )
        self.x_train = torch.from_numpy(self.dataset.train.x).to(self.dtype)
        self.y_train = torch.from_numpy(self.dataset.train.y)
        self.x_test = torch.from_numpy(self.dataset.test.x).to(self.dtype)
        self.y_test = torch.from_numpy(self.dataset.test.y)
        self.indices = torch.from_numpy(self.partition.indices)
        self.counts = torch.from_numpy(self.partition.counts)
        self.batch_gen = _torch_generator(seeds["batches"])
        self.noise_gen = _torch_generator(seeds["noise"])
        self.fault_rng = np.random.default_rng(seeds["faults"])
        self.secagg_rng = np.random.default_rng(seeds["secagg"])
        n = scenario.n
        self.byzantine = np.zeros(n, dtype=np.bool_)
        if scenario.faults.byzantine:
            chosen = self.fault_rng.choice(n, size=scenario.faults.byzantine, replace=False)
            self.byzantine[chosen] = True
        self.honest = torch.from_numpy(~self.byzantine)
        self.theta = self._initial_parameters(seeds["init"])
        # Drawn only for this attack, so other scenarios' fault streams stay as they were.
        self.attack_direction = attack_direction(scenario.faults, self.theta, self.fault_rng)
        self.topology: Any | None = None  # a topologies.Topology, for gossip and tracking
        self.schedule: MixingSchedule | None = None
        if scenario.algorithm.name in ("gossip", "gradient_tracking"):
            topo_seed = int(seeds["topology"].generate_state(1, np.uint32)[0])
            self.topology = build_topology(scenario.topology, n, topo_seed)
            self.schedule = MixingSchedule(self.topology, self.dtype)
        self.tracker = torch.zeros_like(self.theta)
        #: Sites without a training example: never selected, never in a mean (reported).
        self.empty_sites = int((self.partition.counts == 0).sum())
        self.exact = ExactRounds(
            scenario, self.partition.counts, self.theta, seeds["selection"], self.secagg_rng
        )
        self.last_direction = torch.zeros_like(self.theta)
        self.compressor: Compressor | None = None  # [compression]: quantised updates, EF, CHOCO
        if scenario.compression.scheme != "none":
            seed = int(seeds["compression"].generate_state(1, np.uint32)[0])
            self.compressor = Compressor(scenario.compression, n, self.theta, seed)
        self.bytes_cumulative = np.zeros(n, dtype=np.float64)
        self._plan_batches()
        self._cost_cache: dict[int, RoundCost] = {}
        # vmap(grad_and_value(loss)) without importing torch._dynamo (sim.fastgrad).
        self._grad_fn = batched_grad_and_value(self._loss, (0, 0, 0, 0, 0, None, None))

    # -- set-up ---------------------------------------------------------------------------

    def _initial_parameters(self, seq: np.random.SeedSequence) -> torch.Tensor:
        spec = self.scenario.model
        gen = _torch_generator(seq)
        scale = default_init_scale(spec, self.dataset.features)
        if spec.init == "independent":
            return self.model.init(self.scenario.n, scale, gen, self.dtype)
        one = self.model.init(1, scale, gen, self.dtype)
        return one.expand(self.scenario.n, -1).clone()

    # -- local training -------------------------------------------------------------------

    def _loss(
        self,
        theta: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        anchor: torch.Tensor,
        mu: float,
        weight_decay: float,
    ) -> torch.Tensor:
        logits = self.model.forward(theta, xb)
        # Cross-entropy written out: F.cross_entropy goes through a Python decomposition
        # under vmap, which costs more than the arithmetic at these sizes.
        ce = logits.logsumexp(-1) - logits.gather(-1, yb[:, None])[:, 0]
        loss = (ce * wb).sum() / wb.sum().clamp_min(1.0)
        if mu > 0.0:
            loss = loss + 0.5 * mu * ((theta - anchor) ** 2).sum()
        if weight_decay > 0.0:
            loss = loss + 0.5 * weight_decay * (theta**2).sum()
        return loss

    def _plan_batches(self) -> None:
        """Per-peer constants of the local phase, computed once (they depend on m_i only)."""
        spec = self.scenario.training
        counts = self.counts
        # Batch size b_i = min(B, m_i): a small peer uses all its samples in each step.
        b = torch.clamp(counts, max=spec.batch_size).clamp_min(1)
        if spec.local_epochs > 0:
            steps = torch.div(spec.local_epochs * counts + b - 1, b, rounding_mode="floor")
        else:
            steps = torch.where(counts > 0, spec.local_steps, 0)
        self.base_steps = steps
        self.base_max_steps = int(steps.max().item()) if len(steps) else 0
        width_b = max(1, min(spec.batch_size, int(counts.max().item()) if len(counts) else 1))
        offsets = torch.arange(width_b)[None, :]
        self.batch_step = b[:, None]
        self.batch_offsets = offsets
        self.batch_mask = (offsets < b[:, None]) & (counts[:, None] > 0)
        self.batch_limit = (spec.local_epochs * counts)[:, None] if spec.local_epochs > 0 else None
        self.safe_counts = counts.clamp_min(1)[:, None]
        self.pad_mask = torch.arange(self.indices.shape[1])[None, :] >= counts[:, None]

    def _steps_per_peer(
        self, active: NDArray[np.bool_] | None, straggling: NDArray[np.bool_] | None
    ) -> torch.Tensor:
        steps = self.base_steps
        if straggling is not None:
            fraction = self.scenario.faults.straggler_fraction
            cut = torch.ceil(steps.to(torch.float64) * fraction).to(torch.int64)
            steps = torch.where(torch.from_numpy(straggling), cut, steps)
        if active is not None:
            steps = torch.where(torch.from_numpy(active), steps, 0)
        return steps

    def local_phase(
        self,
        theta: torch.Tensor,
        steps: torch.Tensor,
        correction: torch.Tensor | None,
        mu: float,
    ) -> LocalResult:
        """Every peer's local SGD steps at once (``steps[i]`` steps for peer i).

        Peer i walks a fresh random permutation of its m_i samples in batches of
        b_i = min(B, m_i), wrapping around when it makes more than one pass; in epoch mode
        the walk stops after E·m_i samples (the last batch may be partial).
        """
        spec = self.scenario.training
        n, width = self.indices.shape
        keys = torch.rand(n, width, generator=self.batch_gen, dtype=torch.float64)
        order = torch.argsort(keys.masked_fill(self.pad_mask, math.inf), dim=1)
        shuffled = torch.gather(self.indices, 1, order)  # row i: peer i's samples, shuffled
        # Every peer doing the same number of steps (the common case) needs no step masks.
        uniform = steps is self.base_steps and bool((steps == self.base_max_steps).all())
        anchor = theta
        current = theta
        grad_sum = torch.zeros_like(theta) if correction is not None else None
        loss_sum = torch.zeros(n, dtype=self.dtype)
        for s in range(self.base_max_steps):
            position = s * self.batch_step + self.batch_offsets  # [N, B]
            valid = self.batch_mask
            if self.batch_limit is not None:
                valid = valid & (position < self.batch_limit)
            sample = torch.gather(shuffled, 1, torch.remainder(position, self.safe_counts))
            xb = self.x_train[sample]
            yb = self.y_train[sample]
            wb = valid.to(self.dtype)
            grads, losses = self._grad_fn(current, xb, yb, wb, anchor, mu, spec.weight_decay)
            direction = grads if correction is None else grads + correction
            if uniform:
                current = current - spec.lr * direction
                loss_sum = loss_sum + losses
                if grad_sum is not None:
                    grad_sum = grad_sum + grads
            else:
                live = (s < steps).to(self.dtype)[:, None]
                current = current - spec.lr * live * direction
                loss_sum = loss_sum + live[:, 0] * losses
                if grad_sum is not None:
                    grad_sum = grad_sum + live * grads
        loss_mean = loss_sum / steps.to(self.dtype).clamp_min(1.0)
        return LocalResult(current, grad_sum, steps, loss_mean)

    # -- release (DP and attacks) -----------------------------------------------------------

    def release(
        self, start: torch.Tensor, trained: torch.Tensor, active: NDArray[np.bool_]
    ) -> torch.Tensor:
        """What each peer sends: its update clipped and noised (DP), or attacked (Byzantine)."""
        delta = trained - start
        dp = self.scenario.privacy
        if dp.enabled:
            norms = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
            delta = delta * torch.clamp(dp.clip / norms.clamp_min(1e-12), max=1.0)
            noise = torch.randn(delta.shape, generator=self.noise_gen, dtype=self.dtype)
            delta = delta + (dp.noise_multiplier * dp.clip) * noise
        byz = torch.from_numpy(self.byzantine)
        if self.byzantine.any():
            delta = poison_update(delta, byz, self.scenario.faults)
        if not active.all():
            delta = delta * torch.from_numpy(active).to(self.dtype)[:, None]
        sent = start + delta
        if not self.byzantine.any():
            return sent
        return poison_model(sent, byz, self.scenario.faults, self.attack_direction)

    # -- one round ----------------------------------------------------------------------------

    def step(self, t: int) -> RoundOutcome:
        """Play round t (0-based)."""
        sc = self.scenario
        faults = sc.faults
        n = sc.n
        # Draw only the faults the scenario has, so a fault-free round costs no RNG calls.
        dropped = self.fault_rng.random(n) < faults.dropout if faults.dropout > 0.0 else None
        straggling = (
            self.fault_rng.random(n) < faults.straggler_prob
            if faults.straggler_prob > 0.0
            else None
        )
        active = ~dropped if dropped is not None else np.ones(n, dtype=np.bool_)
        algo = sc.algorithm.name
        training = active
        if algo in EXACT_ALGORITHMS:
            training = active & self.exact.select(self._site_losses, self.dataset.classes)
        steps = self._steps_per_peer(None if training.all() else training, straggling)
        mu = sc.algorithm.mu if algo == "fedprox" else 0.0
        start = self.theta
        real_bytes: NDArray[np.float64] | None = None
        w_round = None
        if self.schedule is not None:
            w_round = self.schedule.scipy_at(t)
            if faults.dropout > 0.0 or faults.link_failure > 0.0:
                w_round = with_faults(w_round, active, faults.link_failure, self.fault_rng)
                w_torch = to_torch_csr(w_round, self.dtype)
            else:
                w_torch = self.schedule.torch_at(t)

        correction = None
        if algo == "gradient_tracking":
            correction = self.tracker - self.last_direction
        elif self.exact.scaffold is not None:
            correction = self.exact.scaffold.correction()
        local = self.local_phase(start, steps, correction, mu)
        sent = self.release(start, local.theta, training)
        sent = self._compress(algo, start, sent, training)

        vectors = 1
        if algo == "local":
            self.theta = sent
        elif algo in EXACT_ALGORITHMS:
            vectors = 1 if self.exact.scaffold is None else 2
            self.theta, real_bytes = self.exact.mix(start, local.theta, sent, steps, active, t)
        elif algo == "gossip":
            self.theta = self._gossip(w_round, w_torch, start, sent)
        else:  # gradient_tracking
            vectors = 2
            assert local.grad_sum is not None
            done = local.steps_done.to(self.dtype)[:, None]
            direction = torch.where(
                done > 0, local.grad_sum / done.clamp_min(1.0), self.last_direction
            )
            if self.byzantine.any():
                faults_spec = sc.faults
                factor = -1.0 if faults_spec.attack == "sign_flip" else faults_spec.attack_scale
                byz = torch.from_numpy(self.byzantine)[:, None]
                direction = torch.where(byz, factor * direction, direction)
            self.tracker = w_torch @ self.tracker + direction - self.last_direction
            self.last_direction = direction
            moved = start - sc.training.lr * done * self.tracker
            self.theta = w_torch @ moved

        faulty_links = faults.dropout > 0.0 or faults.link_failure > 0.0
        phase = t % self.schedule.period if self.schedule is not None else 0
        cost = None if faulty_links else self._cost_cache.get(phase)
        if cost is None:
            if w_round is not None:
                sends = send_counts(w_round)
                groups = receive_counts(w_round) + 1
            else:
                sends = np.zeros(n, dtype=np.int64)
                groups = np.ones(n, dtype=np.int64)
            cost = round_cost(
                self.model.size,
                sends,
                groups,
                active if algo != "local" else np.zeros(n, dtype=np.bool_),
                algo in EXACT_ALGORITHMS,
                vectors,
                sc.network,
                sc.secagg,
                self._coordinate_bits(algo),
            )
            if not faulty_links:
                self._cost_cache[phase] = cost
        if real_bytes is not None:
            cost = RoundCost(real_bytes, cost.time_s)
        self.bytes_cumulative += cost.bytes_sent
        return RoundOutcome(cost.bytes_sent, cost.time_s, training, steps, local.loss_mean)

    def _compress(
        self, algo: str, start: torch.Tensor, sent: torch.Tensor, members: NDArray[np.bool_]
    ) -> torch.Tensor:
        """The members' models with quantised updates (exact means under [compression])."""
        if self.compressor is None or algo not in EXACT_ALGORITHMS:
            return sent
        return self.compressor.exact(start, sent, members)

    def _gossip(
        self, w: Any, w_torch: torch.Tensor, start: torch.Tensor, sent: torch.Tensor
    ) -> torch.Tensor:
        """Plain gossip, or CHOCO-SGD under [compression]."""
        if self.compressor is None:
            return gossip_mix(w, w_torch, sent, self.scenario.algorithm)
        return self.compressor.choco(w_torch, start, sent)

    def _coordinate_bits(self, algo: str) -> int:
        """Compressed coordinates' wire width for the byte model (0: uncompressed)."""
        if self.compressor is None:
            return 0
        return self.compressor.coordinate_bits(algo in EXACT_ALGORITHMS)

    def _site_losses(self) -> torch.Tensor:
        x, y = self.x_train, self.y_train
        return site_losses(self.model, self.theta, x, y, self.indices, self.counts)

    # -- metrics --------------------------------------------------------------------------

    def evaluate(self) -> Evaluation:
        """Per-peer test accuracy and loss, average-model accuracy, consensus distance."""
        theta = self.theta[self.honest]
        return evaluate(self.model, theta, self.x_test, self.y_test, self.dataset.classes)

    def _record(
        self,
        t: int,
        sent: NDArray[np.float64],
        comm: float,
        active: int,
        train_loss: float,
    ) -> RoundRecord:
        dp = self.scenario.privacy
        eps = epsilon(dp.noise_multiplier, t, dp.delta, dp.accountant) if dp.enabled else None
        traffic = Traffic(sent, float(self.bytes_cumulative.mean()), comm, active)
        return round_record(t, self.evaluate(), traffic, train_loss, eps)

    def run(
        self, on_round: Callable[[int], None] | None = None, threads: int = 1
    ) -> list[RoundRecord]:
        """Play every round; returns the metric records (round 0 and each evaluated round).

        torch runs on ``threads`` intra-op threads for the duration (restored afterwards):
        one by default, because the per-step tensors are small and extra threads only
        contend on a shared machine, and because a fixed thread count keeps float
        reductions, hence results, bit-for-bit stable.
        """
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._run(on_round)
        finally:
            torch.set_num_threads(before)

    def _run(self, on_round: Callable[[int], None] | None) -> list[RoundRecord]:
        sc = self.scenario
        zeros = np.zeros(sc.n, dtype=np.float64)
        records = [self._record(0, zeros, 0.0, sc.n, math.nan)]
        for t in range(sc.rounds):
            outcome = self.step(t)
            done = t + 1
            if done % sc.eval_every == 0 or done == sc.rounds:
                records.append(
                    self._record(
                        done,
                        outcome.bytes_sent,
                        outcome.comm_time_s,
                        int(outcome.active.sum()),
                        outcome.train_loss(),
                    )
                )
            if on_round is not None:
                on_round(done)
        return records


def run_scenario(
    scenario: Scenario, on_round: Callable[[int], None] | None = None, threads: int = 1
) -> list[RoundRecord]:
    """Build a simulator for ``scenario`` and play it out."""
    return Simulator(scenario).run(on_round, threads)

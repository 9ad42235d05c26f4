"""Local training: FedAvg-style local steps, FedProx, personal layers, checkpoints.

Theory of operation: each round a peer loads the consortium's shared weights into its model
(personal layers keep their local values), runs ``local_epochs`` of minibatch steps on its
own data, and returns its *update*: local minus global shared weights, as one float32
vector in the ``ParameterLayout`` order. Only that vector may leave the node, after the
privacy layer has clipped and noised it. FedProx adds ``(μ/2)‖w − w_global‖²`` over the
shared weights to the loss, limiting client drift on non-IID data. Randomness (shuffling)
comes from an injected ``torch.Generator`` so runs are reproducible.

``LocalTrainer`` is the daemon's implementation of the trainer protocol
(``p2pfed.training.state``): given its ``train`` and ``test`` tables, ``fit`` and
``evaluate`` work on states; ``train_round`` and ``score`` work on vectors and tables.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from p2pfed.durable import atomic_write, sealed_parts, unseal
from p2pfed.errors import ConfigError, DataError, IntegrityError
from p2pfed.privacy.dpsgd import NoiseSource, dp_sgd_step, poisson_sample, refuse_batch_mixing
from p2pfed.privacy.sampling import SecureGaussian
from p2pfed.training.data import Dataset
from p2pfed.training.optim import SGD, Adam, Optimizer
from p2pfed.training.options import TrainingConfig
from p2pfed.training.state import (
    FitResult,
    ModuleState,
    StatePolicy,
    flatten,
    layout_of,
    load_into,
    unflatten,
)


@dataclass(frozen=True)
class DPSGD:
    """Example-level DP-SGD settings: Poisson rate q, per-example clip C, noise σ."""

    sample_rate: float
    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"DP-SGD sample rate must be in (0, 1], got {self.sample_rate}")
        if not (self.clip_norm > 0 and self.noise_multiplier > 0):
            raise ConfigError("DP-SGD clip norm and noise multiplier must be positive")

    def steps_per_epoch(self) -> int:
        """Poisson-sampled steps that make one expected pass over the data: ⌈1/q⌉."""
        return max(1, math.ceil(1.0 / self.sample_rate))


@dataclass(frozen=True)
class Metrics:
    """Loss and accuracy of a model on a data set."""

    loss: float
    accuracy: float
    samples: int


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training produced."""

    update: NDArray[np.float32]
    loss: float
    steps: int
    samples: int
    sample_rate: float = 1.0
    """Poisson rate of each step (DP-SGD); 1.0 when every example is used."""


class LocalTrainer(ModuleState):
    """Trains one peer's model; owns the model, optimizer and shuffling generator.

    Its state half (``policy``: personal prefixes stay local, every other floating tensor is
    shared; ``get_state``, ``set_state``) is ``ModuleState``'s, as for the other trainers.
    """

    copies_state_in = True  # set_state copies in (load_into); fit and evaluate call it first

    def __init__(
        self,
        model: nn.Module,
        config: TrainingConfig,
        generator: torch.Generator | None = None,
        dp_sgd: DPSGD | None = None,
        noise_generator: NoiseSource | None = None,
        *,
        train: Dataset | None = None,
        test: Dataset | None = None,
    ) -> None:
        """``train``/``test``: the tables ``fit`` and ``evaluate`` use (the protocol's data)."""
        if dp_sgd is not None:
            refuse_batch_mixing(model)  # at build time, not at the first round
        self.module = model
        self.train = train
        self.test = test
        self.config = config
        self.dp_sgd = dp_sgd
        # Noise must not be predictable from the shuffling seed: its own generator.
        self.noise_generator = noise_generator
        self._policy = StatePolicy(local=config.personal_prefixes)
        self.layout = layout_of(model.state_dict(), self._policy)
        self.generator = generator if generator is not None else torch.Generator()
        self._optimizer: Optimizer | None = None
        self._loss = nn.CrossEntropyLoss()

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer, made at first use (``p2pfed.training.optim``: not ``torch.optim``)."""
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        return self._optimizer

    def _make_optimizer(self) -> Optimizer:
        c = self.config
        params = self.module.parameters()
        if c.optimizer == "adam":
            return Adam(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        return SGD(params, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay)

    @property
    def model(self) -> nn.Module:
        """The model trained (``module``, the name ``ModuleState`` gives it)."""
        return self.module

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        """The protocol's round: local steps on ``train`` from ``state``.

        The state is loaded once and no update is made here (the caller makes it from the
        returned state): at 10 M parameters ``train_round`` would load the model a second
        time and flatten it twice more, 40 MB each.
        """
        if self.train is None:
            raise ConfigError("LocalTrainer was built without train=: it has no data to fit on")
        self.set_state(state)
        loss, steps, sample_rate = self._local_steps(self.train)
        return FitResult(self.get_state(), len(self.train), {"loss": loss}, sample_rate, steps)

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The protocol's metrics: ``score`` of ``state`` on ``test`` (none without it)."""
        if self.test is None:
            return {}
        self.set_state(state)
        metrics = self.score(self.test)
        return {"loss": metrics.loss, "accuracy": metrics.accuracy}

    def shared_weights(self) -> NDArray[np.float32]:
        """The current shared weights as a flat vector."""
        return flatten(self.layout, self.module.state_dict())

    def load_shared(self, vector: NDArray[np.floating]) -> None:
        """Set the shared weights (personal layers keep theirs)."""
        load_into(self.module, unflatten(self.layout, vector))

    def train_round(self, data: Dataset, global_weights: NDArray[np.floating]) -> TrainResult:
        """Start from ``global_weights``, train locally, return ``local − global``."""
        self.load_shared(global_weights)
        loss, steps, sample_rate = self._local_steps(data)
        update = self._update(global_weights)
        if self.dp_sgd is not None and not np.all(np.isfinite(update)):
            raise DataError("local training diverged (update is not finite)")
        return TrainResult(update, loss, steps, len(data), sample_rate)

    def _local_steps(self, data: Dataset) -> tuple[float, int, float]:
        """Train the model as it is on ``data``: (mean loss, steps, Poisson sample rate)."""
        if len(data) == 0:
            raise DataError(f"{data.name}: no rows to train on")
        if not np.all(np.isfinite(data.x)):
            raise DataError(f"{data.name}: features hold NaN or infinite values; clean them first")
        mu = self.config.fedprox_mu
        shared = [p for name, p in self.module.named_parameters() if name in set(self.layout.names)]
        # FedProx's anchor, a copy of the model: only when the proximal term is on.
        reference = [p.detach().clone() for p in shared] if mu > 0 else []
        x = torch.from_numpy(data.inputs())
        y = torch.from_numpy(data.y)
        self.module.train()
        if self.dp_sgd is not None:
            done = self._train_dp_sgd(data, x, y, shared, reference)
        else:
            done = self._train_plain(x, y, len(data), shared, reference)
        self.optimizer.zero_grad(set_to_none=True)  # the gradients, a model's worth, freed
        return done

    def _train_plain(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        n: int,
        shared: Sequence[torch.Tensor],
        reference: Sequence[torch.Tensor],
    ) -> tuple[float, int, float]:
        mu = self.config.fedprox_mu
        steps, total = 0, 0.0
        for idx in self._batches(n):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.module(x[idx]), y[idx])
            if mu > 0:
                prox = sum(((p - r) ** 2).sum() for p, r in zip(shared, reference, strict=True))
                loss = loss + 0.5 * mu * prox
            loss.backward()
            self.optimizer.step()
            steps += 1
            total += float(loss.detach())
        if not np.isfinite(total):
            raise DataError("local training diverged (loss is not finite); lower the learning rate")
        return total / steps, steps, 1.0

    def _update(self, global_weights: NDArray[np.floating]) -> NDArray[np.float32]:
        """``local − global``, made in place."""
        update = self.shared_weights()
        update -= np.asarray(global_weights, dtype=np.float32)
        return update

    def _batches(self, n: int) -> list[torch.Tensor]:
        """Minibatch indices of one round: whole shuffled epochs, or ``local_steps`` batches."""
        size = self.config.batch_size
        batches: list[torch.Tensor] = []
        epochs = self.config.local_epochs
        while True:
            order = torch.randperm(n, generator=self.generator)
            batches += [order[i : i + size] for i in range(0, n, size)]
            epochs -= 1
            if self.config.local_steps:
                if len(batches) >= self.config.local_steps:
                    return batches[: self.config.local_steps]
            elif epochs == 0:
                return batches

    def _train_dp_sgd(
        self,
        data: Dataset,
        x: torch.Tensor,
        y: torch.Tensor,
        shared: Sequence[torch.Tensor],
        reference: Sequence[torch.Tensor],
    ) -> tuple[float, int, float]:
        dp = self.dp_sgd
        assert dp is not None
        if self.noise_generator is None:
            self.noise_generator = SecureGaussian()  # ChaCha20 keyed from os.urandom
        steps = self.config.local_steps or self.config.local_epochs * dp.steps_per_epoch()
        expected = dp.sample_rate * len(data)
        total = 0.0
        for _ in range(steps):
            idx = poisson_sample(len(data), dp.sample_rate, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            dp_sgd_step(
                self.module,
                self._loss,
                (x[idx], y[idx]),
                clip_norm=dp.clip_norm,
                noise_multiplier=dp.noise_multiplier,
                generator=self.noise_generator,
                expected_batch_size=expected,
            )
            if self.config.fedprox_mu > 0:
                # The proximal term does not touch the data: adding it keeps the step private.
                with torch.no_grad():
                    for p, r in zip(shared, reference, strict=True):
                        assert p.grad is not None
                        p.grad += self.config.fedprox_mu * (p - r)
            self.optimizer.step()
            if len(idx):
                with torch.no_grad():
                    total += float(self._loss(self.module(x[idx]), y[idx]))
        return total / steps, steps, dp.sample_rate

    @torch.no_grad()
    def score(self, data: Dataset) -> Metrics:
        """Loss and accuracy of the current model on ``data``."""
        if len(data) == 0:
            raise DataError(f"{data.name}: no rows to evaluate on")
        self.module.eval()
        logits = self.module(torch.from_numpy(data.inputs()))
        y = torch.from_numpy(data.y)
        loss = float(self._loss(logits, y))
        accuracy = float((logits.argmax(dim=1) == y).float().mean())
        return Metrics(loss, accuracy, len(data))

    # --- checkpoints ------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path, round_number: int, extra: dict[str, Any]) -> None:
        """Atomically write model, optimizer and generator state after ``round_number``."""
        state = {
            "round": round_number,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "layout": [list(self.layout.names), [list(s) for s in self.layout.shapes]],
            "extra": extra,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(path, sealed_parts(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path) -> tuple[int, dict[str, Any]]:
        """Restore state from ``save_checkpoint``; returns (round, extra).

        Raises ``IntegrityError`` if the file is corrupted or from another model.
        """
        path = Path(path)
        try:
            payload = unseal(path.read_bytes(), f"checkpoint {path}")
        except FileNotFoundError:
            raise IntegrityError(f"checkpoint {path} does not exist") from None
        try:
            state = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # torch raises many types for a bad archive
            raise IntegrityError(f"checkpoint {path} cannot be read ({exc})") from None
        layout = [list(self.layout.names), [list(s) for s in self.layout.shapes]]
        if state.get("layout") != layout:
            raise IntegrityError(f"checkpoint {path} is for a different model architecture")
        self.module.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except IntegrityError as exc:
            raise IntegrityError(f"checkpoint {path}: {exc}") from None
        self.generator.set_state(state["generator"])
        return int(state["round"]), dict(state["extra"])

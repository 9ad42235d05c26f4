"""``TorchTrainer``: the trainer protocol for any ``nn.Module``, loss and ``DataLoader``.

Theory of operation: a plain torch loop. ``fit`` loads the consortium's shared tensors,
runs ``epochs`` passes over ``train_loader`` (batches are ``(inputs, targets)``), and returns
the module's full ``state_dict``: parameters and buffers, so BatchNorm running statistics
are averaged like parameters unless the ``StatePolicy`` keeps them local. The optimizer is
built once by the caller's factory, so its state (momentum, Adam moments) carries over
rounds as in a local loop.

With ``dpsgd``, each local step is one DP-SGD step (``p2pfed.privacy.dpsgd``: per-example
gradient norms by ghost clipping, clipped and noised) on a Poisson sample of the loader's data
set, collated by the loader's ``collate_fn``; ``⌈1/q⌉`` steps make one expected epoch. A
module with BatchNorm is refused when the trainer is built, as it mixes examples.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from p2pfed.durable import atomic_write, sealed_parts, unseal
from p2pfed.errors import ConfigError, DataError, IntegrityError
from p2pfed.privacy.dpsgd import (
    LossFn,
    NoiseSource,
    dp_sgd_step,
    poisson_sample,
    refuse_batch_mixing,
)
from p2pfed.privacy.sampling import SecureGaussian
from p2pfed.training.optim import SGD, Optimizer
from p2pfed.training.state import FitResult, ModuleState, StatePolicy
from p2pfed.training.trainer import DPSGD

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer | Optimizer]


def sgd(learning_rate: float = 0.1) -> OptimizerFactory:
    """A factory for plain SGD at ``learning_rate`` (``p2pfed.training.optim``: no dynamo)."""
    return lambda params: SGD(params, lr=learning_rate)


class TorchTrainer(ModuleState):
    """Trains ``module`` with ``loss_fn`` on ``train_loader``; evaluates on ``eval_loader``."""

    copies_state_in = True  # set_state copies in (load_into); fit and evaluate call it first

    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        train_loader: DataLoader[Any],
        eval_loader: DataLoader[Any] | None = None,
        optimizer: OptimizerFactory | None = None,
        *,
        policy: StatePolicy | None = None,
        epochs: int = 1,
        dpsgd: DPSGD | None = None,
        generator: torch.Generator | None = None,
        noise_generator: NoiseSource | None = None,
    ) -> None:
        """``loss_fn(outputs, targets)`` must average over the batch it is given.

        ``generator`` draws DP-SGD's Poisson samples, ``noise_generator`` its noise (by
        default the CSPRNG); ``optimizer`` builds the optimizer from the parameters.
        """
        if epochs < 1:
            raise ConfigError(f"TorchTrainer epochs must be ≥ 1, got {epochs}")
        if dpsgd is not None:
            refuse_batch_mixing(module)
        self.module = module
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.optimizer = (optimizer or sgd())(module.parameters())
        self._policy = policy or StatePolicy()
        self.epochs = epochs
        self.dpsgd = dpsgd
        self.generator = generator if generator is not None else torch.Generator()
        self.noise_generator = noise_generator

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        """Train one round from ``state``; returns the new full state."""
        self.set_state(state)
        self.module.train()
        if self.dpsgd is not None:
            return self._fit_dp(self.dpsgd)
        total, seen, steps = 0.0, 0, 0
        for _ in range(self.epochs):
            for inputs, targets in self.train_loader:
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.module(inputs), targets)
                torch.autograd.backward(loss)
                self.optimizer.step()
                total += float(loss.detach()) * len(targets)
                seen += len(targets)
                steps += 1
        if seen == 0:
            raise DataError("the training DataLoader yielded no examples")
        if not torch.isfinite(torch.tensor(total)):
            raise DataError("local training diverged (loss is not finite); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)  # a model's worth of memory, idle till then
        return FitResult(self.get_state(), seen // self.epochs, {"loss": total / seen}, 1.0, steps)

    def _fit_dp(self, dp: DPSGD) -> FitResult:
        data = self.train_loader.dataset
        n = len(data)  # type: ignore[arg-type]  # a map-style data set: Poisson needs its size
        if n == 0:
            raise DataError("the training data set is empty")
        if self.noise_generator is None:
            self.noise_generator = SecureGaussian()
        collate = self.train_loader.collate_fn
        steps = self.epochs * dp.steps_per_epoch()
        total = 0.0
        for _ in range(steps):
            idx = poisson_sample(n, dp.sample_rate, self.generator).tolist()
            batch = collate([data[i] for i in idx]) if idx else (torch.empty(0), torch.empty(0))
            self.optimizer.zero_grad(set_to_none=True)
            dp_sgd_step(
                self.module,
                self.loss_fn,
                batch,
                clip_norm=dp.clip_norm,
                noise_multiplier=dp.noise_multiplier,
                generator=self.noise_generator,
                expected_batch_size=dp.sample_rate * n,
            )
            self.optimizer.step()
            if idx:
                with torch.no_grad():
                    total += float(self.loss_fn(self.module(batch[0]), batch[1]))
        self.optimizer.zero_grad(set_to_none=True)
        state = self.get_state()
        if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
            raise DataError("local training diverged (the model is not finite)")
        return FitResult(state, n, {"loss": total / steps}, dp.sample_rate, steps)

    @torch.no_grad()
    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Mean loss on ``eval_loader`` and, for class scores, accuracy."""
        if self.eval_loader is None:
            return {}
        self.set_state(state)
        self.module.eval()
        loss, correct, seen, classified = 0.0, 0, 0, True
        for inputs, targets in self.eval_loader:
            out = self.module(inputs)
            loss += float(self.loss_fn(out, targets)) * len(targets)
            seen += len(targets)
            if out.ndim == 2 and out.shape[1] > 1 and not targets.is_floating_point():
                correct += int((out.argmax(dim=1) == targets).sum())
            else:
                classified = False
        if seen == 0:
            raise DataError("the evaluation DataLoader yielded no examples")
        metrics = {"loss": loss / seen}
        if classified:
            metrics["accuracy"] = correct / seen
        return metrics

    def save_checkpoint(self, path: str | Path, round_number: int, extra: dict[str, Any]) -> None:
        """Atomically write the module, optimizer and sampling generator after a round."""
        buffer = io.BytesIO()
        torch.save(
            {
                "round": round_number,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "extra": extra,
            },
            buffer,
        )
        atomic_write(path, sealed_parts(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path) -> tuple[int, dict[str, Any]]:
        """Restore ``save_checkpoint``'s file; ``IntegrityError`` if bad or another model's."""
        path = Path(path)
        try:
            payload = unseal(path.read_bytes(), f"checkpoint {path}")
            state = torch.load(io.BytesIO(payload), weights_only=True)
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
        except (IntegrityError, FileNotFoundError):
            raise
        except Exception as exc:  # torch raises many types for a bad archive or shape
            raise IntegrityError(f"checkpoint {path} cannot be restored ({exc})") from None
        return int(state["round"]), dict(state["extra"])

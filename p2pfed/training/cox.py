"""Cox proportional hazards in torch: Breslow partial likelihood, concordance, a Trainer.

Theory of operation: a Cox model scores a patient with a linear predictor η = xβ (no
intercept: the baseline hazard absorbs it). Its negative partial log-likelihood with
Breslow's handling of tied event times is

    −ℓ(β) = Σ_{i: event} [ η_i − log Σ_{j: t_j ≥ t_i} exp η_j ]

so every patient still at risk at t_i (tied event times included, all counted in full) is
in the risk set of i. ``cox_loss`` sorts by time once and takes, for each patient, the
reverse cumulative log-sum-exp at the *first* position of its tie group, which is that
risk set. It returns the mean over events, so a learning rate means the same at every site.

``concordance_index`` is Harrell's C: over the comparable pairs (the shorter time is an
event; a patient censored at a death time counts as outliving it), the share in which the
shorter-lived patient has the higher risk score, ties in score counting one half
(lifelines' ``concordance_index`` takes survival-like scores, i.e. the negated risk).

``CoxTrainer`` implements the trainer protocol (``p2pfed.training.state``) for a
``nn.Linear(p, 1, bias=False)``: ``fit`` takes ``local_steps`` full-batch gradient steps of
``cox_loss`` on the site's own patients (each site's risk sets are its own: the federated
objective is the sum of the sites' partial likelihoods, a Cox model stratified by site).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from p2pfed.errors import ConfigError, DataError
from p2pfed.training.optim import SGD
from p2pfed.training.state import FitResult, ModuleState, StatePolicy


@dataclass(frozen=True)
class Survival:
    """One site's patients: covariates (standardised), follow-up time, event indicator."""

    x: NDArray[np.float32]
    time: NDArray[np.float64]
    event: NDArray[np.bool_]

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 2 or self.time.shape != (n,) or self.event.shape != (n,):
            raise DataError(
                f"survival data needs x of shape (n, p) with n times and n event flags, got "
                f"{self.x.shape}, {self.time.shape} and {self.event.shape}"
            )
        if not (np.all(np.isfinite(self.x)) and np.all(np.isfinite(self.time))):
            raise DataError("survival data holds NaN or infinite covariates or times")
        if np.any(self.time < 0):
            raise DataError("survival times must be non-negative")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def events(self) -> int:
        """How many patients had the event (the rest are censored)."""
        return int(self.event.sum())

    def subset(self, idx: NDArray[np.intp]) -> Survival:
        """The patients at ``idx``."""
        return Survival(self.x[idx], self.time[idx], self.event[idx])


def cox_loss(eta: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean negative Breslow partial log-likelihood per event of risk scores ``eta``.

    ``eta``, ``time`` and ``event`` are 1-D of one length; a set without events gives 0
    (it says nothing about β).
    """
    order = torch.argsort(time)
    t, e, s = time[order], event[order].to(eta.dtype), eta[order]
    # log Σ_{j ≥ k} exp s_j in ascending time order: the patients still at risk at t_k.
    at_risk = torch.flip(torch.logcumsumexp(torch.flip(s, (0,)), 0), (0,))
    # Breslow: a tied group shares one risk set, which starts at the group's first patient.
    first = torch.searchsorted(t.contiguous(), t.contiguous(), right=False)
    terms = (s - at_risk[first]) * e
    return -terms.sum() / e.sum().clamp(min=1.0)


def concordance_index(
    time: NDArray[np.floating], risk: NDArray[np.floating], event: NDArray[np.bool_]
) -> float:
    """Harrell's C of risk scores (higher = earlier event); ``DataError`` without a pair."""
    t, r, e = (np.asarray(a).reshape(-1) for a in (time, risk, event))
    e = e.astype(bool)
    # Pair (i, j) is comparable when i had the event before j's time, or at it while j was
    # censored then (a patient censored at a death time outlived that death).
    later = (t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :])
    shorter = later & e[:, None]
    pairs = int(shorter.sum())
    if pairs == 0:
        raise DataError("no comparable pair of patients: the concordance index is undefined")
    wins = (r[:, None] > r[None, :]) & shorter
    ties = (r[:, None] == r[None, :]) & shorter
    return float((wins.sum() + 0.5 * ties.sum()) / pairs)


def cox_model(n_features: int) -> nn.Linear:
    """The Cox model's linear predictor, β starting at 0 (hazard ratio 1 for every covariate)."""
    model = nn.Linear(n_features, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model


def _tensors(d: Survival) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(d.x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(d.time, dtype=np.float64)),
        torch.from_numpy(np.ascontiguousarray(d.event, dtype=bool)),
    )


class CoxTrainer(ModuleState):
    """Full-batch gradient descent on one site's Cox partial likelihood (a ``Trainer``)."""

    module: nn.Linear  # β: every coefficient is shared

    def __init__(
        self,
        train: Survival,
        test: Survival | None = None,
        *,
        learning_rate: float = 0.5,
        local_steps: int = 5,
    ) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"the Cox learning rate must be positive, got {learning_rate}")
        if local_steps < 1:
            raise ConfigError(f"the Cox local steps must be ≥ 1, got {local_steps}")
        if train.events == 0:
            raise DataError("the site's training patients hold no event: Cox cannot learn")
        self.module = cox_model(train.x.shape[1])
        self.train, self.test = _tensors(train), (None if test is None else _tensors(test))
        self.n_examples = len(train)
        self.learning_rate, self.local_steps = learning_rate, local_steps
        self.optimizer = SGD(self.module.parameters(), lr=learning_rate)
        self._policy = StatePolicy()

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        """``local_steps`` gradient steps from the consortium's β on this site's patients."""
        self.set_state(state)
        x, t, e = self.train
        loss = torch.tensor(0.0)
        for _ in range(self.local_steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = cox_loss(self.module(x).squeeze(1), t, e)
            torch.autograd.backward(loss)
            self.optimizer.step()
        if not all(bool(torch.isfinite(v).all()) for v in self.module.state_dict().values()):
            raise DataError("Cox training diverged (β is not finite); lower the learning rate")
        return FitResult(self.get_state(), self.n_examples, {"loss": float(loss.detach())}, 1.0, 1)

    @torch.no_grad()
    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Partial-likelihood loss and concordance index on the site's held-out patients."""
        if self.test is None:
            return {}
        self.set_state(state)
        x, t, e = self.test
        eta = self.module(x).squeeze(1)
        metrics = {"loss": float(cox_loss(eta, t, e))}
        # Too few held-out patients for a pair: no C-index this round.
        with contextlib.suppress(DataError):
            metrics["c_index"] = concordance_index(t.numpy(), eta.numpy(), e.numpy())
        return metrics

    def coefficients(self) -> NDArray[np.float64]:
        """β as a float64 vector (log hazard ratios per standardised covariate)."""
        return self.module.weight.detach().reshape(-1).to(torch.float64).numpy().copy()

"""The lung study's models and figures: federated, local-only and pooled Cox, side by side.

Theory of operation: every site trains the same ``CoxTrainer`` (``p2pfed.training.cox``).
The *federated* model comes from the sites' real daemons (``p2pfed.studies.lung_net``) or,
with ``--sim``, from ``simulate``, which runs the identical round in one process: each site
takes ``local_steps`` gradient steps from the consortium's β, its update is clipped to
L2 ≤ S and noised with N(0, σ²S²/m) (the distributed-noise share of each of the m members
the secure sum is guaranteed to hold), and β moves by the plain mean of the noised updates,
as the secure ring's mean does. The *local-only* model of a site is the same trainer on the
site's patients alone, for the same number of gradient steps and without noise. The *pooled*
reference is lifelines' ``CoxPHFitter`` on all sites' training patients together (no
privacy). All are scored by ``concordance_index`` on held-out patients: the consortium test
set (every site's held-out patients together) and each site's own.

Privacy: ε is that of the Gaussian mechanism applied once per round (q = 1) at noise
multiplier σ, composed over the rounds by the PLD accountant, at δ; the unit protected is a
site's whole update (all its patients), so a single patient's ε is at most this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from p2pfed.errors import ConfigError
from p2pfed.privacy.accountants import make_accountant
from p2pfed.studies.lung_data import CENTER, COVARIATES, SCALE, Site, pooled
from p2pfed.training.cox import CoxTrainer, Survival, concordance_index

Vector = NDArray[np.float64]


@dataclass(frozen=True)
class LungSettings:
    """What the study runs; fixed before any result was looked at (docs/studies/lung.md)."""

    rounds: int = 30
    seed: int = 0
    local_steps: int = 5
    learning_rate: float = 0.5
    clip_norm: float = 0.1
    noise_multiplier: float = 2.0
    delta: float = 1e-5
    min_events: int = 30
    test_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 200:
            raise ConfigError(f"--rounds must be between 1 and 200, got {self.rounds}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")
        if not (self.clip_norm > 0 and self.noise_multiplier > 0 and 0 < self.delta < 1):
            raise ConfigError("the lung study needs a positive clip norm, σ and δ in (0, 1)")

    def epsilon(self) -> float:
        """ε after all rounds (PLD accountant, q = 1, one release per round)."""
        accountant = make_accountant("pld")
        accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0, steps=self.rounds)
        return float(accountant.get_epsilon(self.delta))


def trainer_for(site: Site, settings: LungSettings) -> CoxTrainer:
    """The site's trainer, as its daemon builds it."""
    return CoxTrainer(
        site.train,
        site.test,
        learning_rate=settings.learning_rate,
        local_steps=settings.local_steps,
    )


def _state(beta: Vector) -> dict[str, torch.Tensor]:
    return {"weight": torch.tensor(beta, dtype=torch.float32).reshape(1, -1)}


def guaranteed_share(n_sites: int) -> int:
    """m: the contributions a secure sum of ``n_sites`` always holds (its consistency quorum)."""
    from p2pfed.secagg.params import SecAggConfig, plan_cohort

    plan = plan_cohort(SecAggConfig("lung", 0, 1), frozenset(f"s{k}" for k in range(n_sites)))
    return plan.min_survivors


def simulate(sites: list[Site], settings: LungSettings) -> list[Vector]:
    """The consortium's β after each of ``settings.rounds`` rounds, in one process (``--sim``)."""
    rng = np.random.default_rng(settings.seed)
    trainers = [trainer_for(site, settings) for site in sites]
    m = guaranteed_share(len(sites))
    beta, history = np.zeros(len(COVARIATES)), []
    for r in range(settings.rounds):
        updates = []
        for trainer in trainers:
            local = trainer.fit(_state(beta), r).state["weight"].reshape(-1).double().numpy()
            update = local - beta
            norm = float(np.linalg.norm(update))
            update *= min(1.0, settings.clip_norm / norm) if norm > 0 else 1.0
            std = settings.noise_multiplier * settings.clip_norm / math.sqrt(m)
            updates.append(update + rng.normal(0.0, std, size=update.shape))
        beta = beta + np.mean(updates, axis=0)
        history.append(beta)
    return history


def tail_average(history: list[Vector]) -> Vector:
    """The mean β of the last half of the rounds: the federated model.

    Post-processing of released models (no privacy cost): it averages out the per-round
    noise along the flat directions of the likelihood (the performance scores are collinear).
    """
    if not history:
        raise ConfigError("no round completed: there is no federated model")
    return np.asarray(np.mean(history[len(history) // 2 :], axis=0), dtype=np.float64)


def local_only(site: Site, settings: LungSettings) -> Vector:
    """β of the site training alone for as many steps as the federation, without noise."""
    trainer = trainer_for(site, settings)
    state = trainer.get_state()
    for r in range(settings.rounds):
        state = trainer.fit(state, r).state
    return trainer.coefficients()


def pooled_reference(train: Survival) -> Vector:
    """β of lifelines' ``CoxPHFitter`` on every site's training patients together."""
    import pandas as pd
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(train.x.astype(np.float64), columns=list(COVARIATES))
    frame["time"], frame["event"] = train.time, train.event.astype(int)
    fitter = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
    return np.asarray(fitter.params_[list(COVARIATES)].to_numpy(), dtype=np.float64)


def c_index(beta: Vector, data: Survival) -> float:
    """Harrell's C of the linear predictor xβ on ``data``."""
    return concordance_index(data.time, data.x.astype(np.float64) @ beta, data.event)


def hazard_ratios(beta: Vector) -> dict[str, float]:
    """exp(β) per unit of each covariate in its own units (years, score points, kg …)."""
    return {name: float(np.exp(b / s)) for name, b, s in zip(COVARIATES, beta, SCALE, strict=True)}


def summarise(
    sites: list[Site],
    settings: LungSettings,
    federated: Vector,
    locals_: list[Vector],
    pooled_beta: Vector,
    mode: str,
) -> dict[str, Any]:
    """The study's figures: C-indices per site and overall, hazard ratios, ε."""
    test = pooled([s.test for s in sites])
    local_overall = {s.name: c_index(b, test) for s, b in zip(sites, locals_, strict=True)}
    per_site = {
        s.name: {
            "institutions": list(s.institutions),
            "train_patients": len(s.train),
            "train_events": s.train.events,
            "test_patients": len(s.test),
            "local_c_index": c_index(b, s.test),
            "federated_c_index": c_index(federated, s.test),
            "pooled_c_index": c_index(pooled_beta, s.test),
        }
        for s, b in zip(sites, locals_, strict=True)
    }
    fed_hr, pooled_hr = hazard_ratios(federated), hazard_ratios(pooled_beta)
    return {
        "mode": mode,
        "federated_c_index": c_index(federated, test),
        "pooled_c_index": c_index(pooled_beta, test),
        "local_c_index": local_overall,
        "median_local_c_index": float(np.median(list(local_overall.values()))),
        "test_patients": len(test),
        "sites": per_site,
        "hazard_ratios": {
            name: {"federated": fed_hr[name], "pooled_lifelines": pooled_hr[name]}
            for name in COVARIATES
        },
        "coefficients": {"federated": federated.tolist(), "pooled": pooled_beta.tolist()},
        "epsilon": settings.epsilon(),
        "privacy": {
            "delta": settings.delta,
            "noise_multiplier": settings.noise_multiplier,
            "clip_norm": settings.clip_norm,
            "unit": "a site's whole update per round (record-level epsilon is at most this)",
        },
        "settings": asdict(settings),
        "normalisation": {"center": list(CENTER), "scale": list(SCALE)},
    }

"""The NCCTG lung-cancer cohort as naturally federated sites (``p2pfed study lung``).

Theory of operation: ``lifelines.datasets.load_lung`` holds 228 patients of the North
Central Cancer Treatment Group from 18 institutions (column ``inst``), with survival time in
days and ``status`` 1 = died, 0 = censored. The study's covariates are fixed before looking
at any result: age, sex, ECOG and Karnofsky performance scores (physician's and patient's)
and weight loss. ``meal.cal`` is left out (47 of 228 missing); a patient missing ``inst`` or
any covariate is dropped (complete cases: 209 patients, 147 deaths).

Sites are the institutions themselves, merged only where one is too small to train on:
``merge_sites`` walks the institutions from the largest (most patients; ties by lower code)
to the smallest, adding each to the current site and closing the site once it holds at
least ``min_events`` deaths; institutions left in an unclosed site at the end join the last
closed one. No patient is moved between institutions and nothing is synthetic. Each site
then holds out ``test_fraction`` of its own patients (a seeded permutation) for evaluation.

Covariates are standardised with centres and scales fixed in the study protocol from what
the scales mean (years around 60, ECOG 0-4 around 1, Karnofsky 0-100 in steps of 10), not
from anyone's data, so every site computes the same inputs without sharing statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError
from p2pfed.training.cox import Survival

COVARIATES = ("age", "sex", "ph.ecog", "ph.karno", "pat.karno", "wt.loss")
"""The study's covariates, in model order."""
CENTER = (60.0, 1.5, 1.0, 80.0, 80.0, 10.0)
SCALE = (10.0, 0.5, 1.0, 10.0, 10.0, 10.0)


@dataclass(frozen=True)
class Site:
    """One federated site: the institutions merged into it and its patients."""

    name: str
    institutions: tuple[int, ...]
    train: Survival
    test: Survival


def load_complete_cases() -> Any:
    """The lung table's complete cases (a pandas frame); one sentence if lifelines is absent."""
    try:
        from lifelines.datasets import load_lung
    except ImportError:
        raise ConfigError(
            "the lung study needs lifelines: install the project's 'studies' extra"
        ) from None
    table = load_lung()
    return table[["inst", "time", "status", *COVARIATES]].dropna().reset_index(drop=True)


def merge_sites(counts: dict[int, tuple[int, int]], min_events: int) -> list[tuple[int, ...]]:
    """Institutions grouped into sites; ``counts`` maps code → (patients, events)."""
    if min_events < 1:
        raise ConfigError(f"a site needs at least 1 event, got min_events = {min_events}")
    order = sorted(counts, key=lambda code: (-counts[code][0], code))
    sites: list[list[int]] = []
    current: list[int] = []
    for code in order:
        current.append(code)
        if sum(counts[c][1] for c in current) >= min_events:
            sites.append(current)
            current = []
    if current:
        if not sites:
            raise ConfigError(
                f"all institutions together hold fewer than {min_events} events: no site forms"
            )
        sites[-1].extend(current)
    return [tuple(site) for site in sites]


def standardise(x: NDArray[np.float64]) -> NDArray[np.float32]:
    """Covariates in the protocol's agreed units."""
    out: NDArray[np.float32] = ((x - np.array(CENTER)) / np.array(SCALE)).astype(np.float32)
    return out


def build_sites(
    min_events: int, test_fraction: float, seed: int, *, agreed_units: bool = True
) -> list[Site]:
    """The study's sites with their train/test patients (see the module docstring).

    ``agreed_units=False`` keeps the covariates as recorded (what a site's own file holds;
    its daemon standardises them with the protocol's centres and scales).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"the test fraction must be in (0, 1), got {test_fraction}")
    table = load_complete_cases()
    inst = table["inst"].to_numpy().astype(int)
    event = table["status"].to_numpy().astype(bool)
    counts = {int(c): (int((inst == c).sum()), int(event[inst == c].sum())) for c in set(inst)}
    raw = table[list(COVARIATES)].to_numpy(dtype=np.float64)
    data = Survival(
        standardise(raw) if agreed_units else raw.astype(np.float32),
        table["time"].to_numpy(dtype=np.float64),
        event,
    )
    rng = np.random.default_rng(seed)
    sites = []
    for k, codes in enumerate(merge_sites(counts, min_events)):
        rows = np.flatnonzero(np.isin(inst, codes))
        rows = rows[rng.permutation(len(rows))]
        n_test = max(2, round(test_fraction * len(rows)))
        sites.append(
            Site(f"site-{k + 1}", codes, data.subset(rows[n_test:]), data.subset(rows[:n_test]))
        )
    return sites


def pooled(parts: list[Survival]) -> Survival:
    """Several sites' patients as one set (the pooled reference and the consortium test set)."""
    return Survival(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.event for p in parts]),
    )

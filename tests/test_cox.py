"""The Cox model of the lung study: Breslow partial likelihood, concordance, the site merge.

Checked against lifelines (coefficients of a pooled fit, its log-likelihood, its
concordance index) and against hand computations for tied times, where Breslow, Efron and
ignoring ties differ. About 3 s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError
from p2pfed.studies.lung_data import merge_sites
from p2pfed.training.cox import CoxTrainer, Survival, concordance_index, cox_loss

lifelines = pytest.importorskip("lifelines")


def _fixture(n: int = 200, seed: int = 0) -> tuple[Survival, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    beta = np.array([0.8, -0.5, 0.2])
    t = rng.exponential(1 / np.exp(x.astype(np.float64) @ beta))
    c = rng.exponential(2.0, size=n)
    return Survival(x, np.minimum(t, c), t <= c), beta


def _lifelines_fit(d: Survival) -> object:
    import pandas as pd

    frame = pd.DataFrame(d.x.astype(np.float64), columns=["a", "b", "c"])
    frame["T"], frame["E"] = d.time, d.event.astype(int)
    return lifelines.CoxPHFitter().fit(frame, "T", "E")


def test_pooled_training_reaches_lifelines_coefficients() -> None:
    data, _ = _fixture()  # continuous times: no ties, so Efron (lifelines) = Breslow
    fitter = _lifelines_fit(data)
    trainer = CoxTrainer(data, learning_rate=1.0, local_steps=300)
    trainer.fit(trainer.get_state(), 0)
    np.testing.assert_allclose(trainer.coefficients(), fitter.params_.to_numpy(), atol=1e-3)
    # and the loss at lifelines' optimum is its log-likelihood, per event
    eta = torch.from_numpy(data.x.astype(np.float64)) @ torch.tensor(fitter.params_.to_numpy())
    loss = cox_loss(eta, torch.tensor(data.time), torch.tensor(data.event))
    assert float(loss) * data.events == pytest.approx(-fitter.log_likelihood_, rel=1e-9)


def test_breslow_ties_on_a_hand_example() -> None:
    # times 1, 1, 2, 3; the two at t = 1 both die; 3 dies; 2 censored. η = (a, b, c, d).
    eta = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    time = torch.tensor([1.0, 1.0, 2.0, 3.0])
    event = torch.tensor([True, True, False, True])
    a, b, c, d = (float(v) for v in eta)
    everyone = math.log(sum(math.exp(v) for v in (a, b, c, d)))
    # Breslow: both tied deaths share the full risk set {a, b, c, d}.
    breslow = -((a - everyone) + (b - everyone) + (d - d)) / 3
    assert float(cox_loss(eta, time, event)) == pytest.approx(breslow, rel=1e-12)
    # Ignoring the tie would drop the first-sorted one from the second's risk set;
    # Efron would use 1/2 of the tied pair's weight. Both differ here.
    efron_second = math.log(math.exp(everyone) - 0.5 * (math.exp(a) + math.exp(b)))
    efron = -((a - everyone) + (b - efron_second)) / 3
    assert abs(breslow - efron) > 1e-3
    # Order of the input rows does not matter.
    perm = torch.tensor([3, 1, 2, 0])
    assert float(cox_loss(eta[perm], time[perm], event[perm])) == pytest.approx(breslow)
    # Three deaths on one day, then a censored patient: all three share all four.
    eta3 = torch.tensor([0.4, -0.1, 0.2, 0.7], dtype=torch.float64)
    time3, event3 = torch.tensor([5.0, 5.0, 5.0, 9.0]), torch.tensor([True, True, True, False])
    lse = math.log(sum(math.exp(float(v)) for v in eta3))
    expected = -sum(float(v) - lse for v in eta3[:3]) / 3
    assert float(cox_loss(eta3, time3, event3)) == pytest.approx(expected, rel=1e-12)


def test_risk_set_holds_the_later_patients_not_the_earlier() -> None:
    # One death at t = 1 among later patients, and a death at t = 3 with nobody after it.
    eta = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    time = torch.tensor([1.0, 2.0, 3.0])
    event = torch.tensor([True, False, True])
    first = 0.0 - math.log(math.exp(0.0) + math.exp(2.0) + math.exp(1.0))
    last = 1.0 - 1.0  # alone in its risk set
    assert float(cox_loss(eta, time, event)) == pytest.approx(-(first + last) / 2, rel=1e-12)


def test_concordance_matches_lifelines() -> None:
    data, beta = _fixture(n=150, seed=3)
    risk = data.x.astype(np.float64) @ beta
    ours = concordance_index(data.time, risk, data.event)
    theirs = lifelines.utils.concordance_index(data.time, -risk, data.event)
    assert ours == pytest.approx(theirs, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 6),  # small integer times: many ties
            st.integers(-3, 3),  # tied scores too
            st.booleans(),
        ),
        min_size=2,
        max_size=25,
    )
)
def test_concordance_matches_lifelines_with_ties(rows: list[tuple[int, int, bool]]) -> None:
    time = np.array([r[0] for r in rows], dtype=float)
    risk = np.array([r[1] for r in rows], dtype=float)
    event = np.array([r[2] for r in rows])
    try:
        theirs = lifelines.utils.concordance_index(time, -risk, event)
    except ZeroDivisionError:
        with pytest.raises(DataError, match="no comparable pair"):
            concordance_index(time, risk, event)
        return
    assert concordance_index(time, risk, event) == pytest.approx(theirs, abs=1e-12)


def test_merge_rule_is_deterministic_and_each_site_has_enough_events() -> None:
    counts = {1: (30, 20), 2: (20, 12), 3: (20, 9), 4: (10, 8), 5: (5, 3), 6: (2, 1)}
    sites = merge_sites(counts, min_events=15)
    # largest first, ties by lower code; the short remainder (4, 5, 6) joins the last site
    assert sites == [(1,), (2, 3, 4, 5, 6)]
    assert all(sum(counts[c][1] for c in s) >= 15 for s in sites)
    assert merge_sites(counts, min_events=10) == [(1,), (2,), (3, 4, 5, 6)]
    assert merge_sites(dict(reversed(counts.items())), 15) == sites


def test_merge_rule_refuses_too_few_events_with_one_sentence() -> None:
    with pytest.raises(ConfigError, match="fewer than 500 events"):
        merge_sites({1: (10, 5)}, 500)


def test_bad_survival_data_is_refused() -> None:
    with pytest.raises(DataError, match="NaN or infinite"):
        Survival(np.array([[np.nan]], np.float32), np.array([1.0]), np.array([True]))
    with pytest.raises(DataError, match="no event"):
        CoxTrainer(Survival(np.zeros((2, 1), np.float32), np.ones(2), np.zeros(2, bool)))

"""Searches over accountants: σ for a target (ε, δ), and how many releases a budget holds.

Theory of operation: both answers are searched with cheap accountants and then confirmed on
the exact one, so neither ever overshoots. ``noise_multiplier_for`` finds σ for a target
(ε, δ) by bisection that only ever moves its upper end to a σ whose ε was computed to be
within the target, so the answer never exceeds it (for PLD the search runs on a 10× coarser
grid and the answer is confirmed on the fine one). ``releases_within_budget`` doubles and
bisects on ``Accountant.search_copy()``, then steps one release at a time on the accountant
itself. ``epsilon_for`` is the one-shot ε of a fresh accountant both searches build on.
"""

from __future__ import annotations

from p2pfed.errors import ConfigError
from p2pfed.privacy import validate
from p2pfed.privacy.accountants import (
    DEFAULT_ACCOUNTANT,
    Accountant,
    PLDAccountant,
    Step,
    make_accountant,
)


def epsilon_for(
    noise_multiplier: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> float:
    """ε after ``steps`` steps at (σ, q), at δ, with a fresh accountant of that kind."""
    acc = make_accountant(accountant)
    acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    return acc.get_epsilon(delta)


_SIGMA_MIN = 0.05  # below this ε is astronomically large for any useful setting
_SIGMA_MAX = 1e4


def noise_multiplier_for(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
    rtol: float = 1e-3,
) -> float:
    """The smallest σ (to relative tolerance ``rtol``) whose ε after ``steps`` is ≤ target.

    The result is always a σ whose ε was computed and found ≤ ``epsilon``: bisection keeps
    that σ as its upper end (for PLD the search runs on a coarser grid and the answer is
    confirmed on the accountant's own). Raises ``ConfigError`` for bad inputs, or when even σ = 1e4
    cannot reach the target.
    """
    eps_target = validate.epsilon(epsilon)
    d = validate.delta(delta)
    q = validate.sample_rate(sample_rate)
    t = validate.count("steps", steps)
    make_accountant(accountant)  # validates the kind before any work

    if accountant == "pld":
        return _pld_noise_multiplier_for(eps_target, d, q, t, rtol)

    def eps_at(sigma: float) -> float:
        return epsilon_for(sigma, d, q, t, accountant)

    hi = 1.0
    while eps_at(hi) > eps_target:
        hi *= 2.0
        if hi > _SIGMA_MAX:
            raise ConfigError(
                f"no noise multiplier up to {_SIGMA_MAX:g} reaches ε ≤ {eps_target:g} "
                f"at δ={d:g}, q={q:g}, {t} steps"
            )
    lo = hi / 2.0
    while lo > _SIGMA_MIN and eps_at(lo) <= eps_target:
        hi, lo = lo, lo / 2.0
    if lo <= _SIGMA_MIN:
        lo = _SIGMA_MIN
        if eps_at(lo) <= eps_target:
            return lo
    # invariant: eps_at(hi) ≤ target < eps_at(lo)
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps_at(mid) <= eps_target:
            hi = mid
        else:
            lo = mid
    return hi


def _pld_noise_multiplier_for(eps_target: float, d: float, q: float, t: int, rtol: float) -> float:
    """PLD search: bisect on a 10× coarser grid (cheap), then confirm on the fine one.

    RDP is never tighter than PLD, so its σ brackets the answer from above. The coarse
    search only steers; the returned σ is one whose ε on the accountant's own
    discretisation was computed and found ≤ the target.
    """

    def eps_at(sigma: float, vdi: float) -> float:
        acc = PLDAccountant(vdi)
        acc.step(noise_multiplier=sigma, sample_rate=q, steps=t)
        return acc.get_epsilon(d)

    fine = PLDAccountant().value_discretization_interval
    coarse = 10 * fine
    hi = noise_multiplier_for(eps_target, d, q, t, "rdp", rtol)
    lo = hi * 0.7
    while lo > _SIGMA_MIN and eps_at(lo, coarse) <= eps_target:
        hi, lo = lo, lo / 2.0
    lo = max(lo, _SIGMA_MIN)
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps_at(mid, coarse) <= eps_target:
            hi = mid
        else:
            lo = mid
    while eps_at(hi, fine) > eps_target:  # the fine grid has the last word
        hi *= 1 + rtol
    return hi


def releases_within_budget(
    accountant: Accountant,
    budget_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    limit: int = 1_000_000,
) -> int:
    """How many more releases of ``steps`` steps at (σ, q) fit in the budget (≤ ``limit``).

    The search runs on ``accountant.search_copy()`` (for PLD a 10× coarser grid, cheap);
    the answer is then confirmed, one release at a time, on the accountant itself.
    """
    budget = validate.epsilon(budget_epsilon)
    d = validate.delta(delta)
    Step(noise_multiplier, sample_rate, steps)

    def fits(base: Accountant, n: int) -> bool:
        acc = base.copy()
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps * n)
        return acc.get_epsilon(d) <= budget

    search = accountant.search_copy()
    n = 0
    if fits(search, 1):
        good, bad = 1, 2
        while fits(search, bad) and good < limit:
            good, bad = bad, bad * 2
        while bad - good > 1 and good < limit:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(search, mid) else (good, mid)
        n = min(good, limit)
    while n > 0 and not fits(accountant, n):
        n -= 1
    while n < limit and fits(accountant, n + 1):
        n += 1
    return n

"""Checks on privacy parameters, each failing with one sentence naming the bad value.

Theory of operation: every public entry point of ``p2pfed.privacy`` passes its parameters
through these functions before doing any maths, so a bad noise multiplier, sampling rate,
δ, ε or clipping norm never reaches an accountant or the ledger. NaN and infinities are
rejected everywhere (``x > 0`` is false for NaN, but ``inf > 0`` is true, so finiteness is
checked explicitly).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from p2pfed.errors import ConfigError


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {number!r}")
    return number


def noise_multiplier(value: object) -> float:
    """σ, the noise standard deviation in units of the clipping norm: finite and > 0."""
    sigma = _as_float("noise multiplier σ", value)
    if sigma <= 0:
        raise ConfigError(f"noise multiplier σ must be > 0, got {sigma!r}")
    return sigma


def sample_rate(value: object) -> float:
    """q, the Poisson sampling probability: in (0, 1]."""
    q = _as_float("sample rate q", value)
    if not 0 < q <= 1:
        raise ConfigError(f"sample rate q must lie in (0, 1], got {q!r}")
    return q


def delta(value: object) -> float:
    """δ of (ε, δ)-DP: in (0, 1)."""
    d = _as_float("δ (delta)", value)
    if not 0 < d < 1:
        raise ConfigError(f"δ (delta) must lie in (0, 1), got {d!r}")
    return d


def epsilon(value: object) -> float:
    """ε of (ε, δ)-DP or a budget: finite and > 0."""
    e = _as_float("ε (epsilon)", value)
    if e <= 0:
        raise ConfigError(f"ε (epsilon) must be > 0, got {e!r}")
    return e


def clip_norm(value: object) -> float:
    """S, the L2 clipping bound: finite and > 0."""
    s = _as_float("clipping norm S", value)
    if s <= 0:
        raise ConfigError(f"clipping norm S must be > 0, got {s!r}")
    return s


def count(name: str, value: object, minimum: int = 1) -> int:
    """A whole number ≥ ``minimum`` (steps, rounds, peers)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    n = int(value)
    if n < minimum:
        raise ConfigError(f"{name} must be ≥ {minimum}, got {n}")
    return n

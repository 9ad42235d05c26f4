"""Privacy accounting for simulated peers: one function, ε after t rounds.

Theory of operation: with DP on, each peer releases one clipped, Gaussian-noised model
update per round it takes part in (noise N(0, (σS)²) per coordinate for clip norm S). Every
peer takes part in every round unless it drops out, so we account conservatively with
sampling rate q = 1 and t Gaussian mechanisms composed (dropping out only spends less).
The accountant is ``p2pfed.privacy`` (RDP or PLD) when that package is present; otherwise
Google's ``dp_accounting`` RDP or PLD accountant directly. Both give the same figures for
q = 1 up to the accountants' numerical tolerances. Results are cached per (σ, t, δ, kind).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

from p2pfed.errors import ConfigError


def accountant_source() -> str:
    """Which implementation ``epsilon`` uses: ``p2pfed.privacy`` or ``dp_accounting``."""
    return "p2pfed.privacy" if importlib.util.find_spec("p2pfed.privacy") else "dp_accounting"


@functools.lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """ε of ``rounds`` Gaussian releases (q = 1, noise multiplier σ) at the given δ."""
    if noise_multiplier <= 0.0:
        raise ConfigError(f"noise multiplier must be > 0, not {noise_multiplier}")
    if rounds <= 0:
        return 0.0
    if accountant not in ("rdp", "pld"):
        raise ConfigError(f"accountant must be rdp or pld, not {accountant!r}")
    if accountant_source() == "p2pfed.privacy":
        privacy: Any = importlib.import_module("p2pfed.privacy")
        acc = privacy.RDPAccountant() if accountant == "rdp" else privacy.PLDAccountant()
        acc.step(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=rounds)
        return float(acc.get_epsilon(delta))
    import dp_accounting
    from dp_accounting import pld, rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )
    if accountant == "rdp":
        rdp_acc = rdp.RdpAccountant()
        rdp_acc.compose(event)
        return float(rdp_acc.get_epsilon(delta))
    pld_acc = pld.PLDAccountant()
    pld_acc.compose(event)
    return float(pld_acc.get_epsilon(delta))

"""Privacy accounting for simulated peers: one function, ε after t rounds.

Theory of operation: with DP on, each peer releases one clipped, Gaussian-noised model
update per round it takes part in (noise N(0, (σS)²) per coordinate for clip norm S). Every
peer takes part in every round unless it drops out, so we account conservatively with
sampling rate q = 1 and t Gaussian mechanisms composed (dropping out only spends less).
The accountant is ``p2pfed.privacy``'s (RDP or PLD), the one the daemon's ledger uses.
Results are cached per (σ, t, δ, kind).
"""

from __future__ import annotations

import functools

from p2pfed.privacy import epsilon_for


@functools.lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """ε of ``rounds`` Gaussian releases (q = 1, noise multiplier σ) at the given δ.

    Bad σ, δ or accountant kinds are refused by ``p2pfed.privacy`` (``ConfigError``).
    """
    if rounds <= 0:
        return 0.0
    return epsilon_for(noise_multiplier, delta, 1.0, rounds, accountant)

"""Clipping and noise for many peers at once (torch), for the vectorised simulator.

Theory of operation: the simulator holds one update per virtual peer as the rows of a
``(peers, d)`` tensor. ``clip_rows`` scales each row to L2 ≤ S (norms in float64 with a 1e-6
margin so float32 rows stay within S); ``privatize_rows`` then adds each row's share of
Gaussian noise from a ``torch.Generator`` passed in — σ·S in local mode, σ·S/√m in
distributed mode — so the sum over the m rows of one aggregation group carries (σ·S)², as
``p2pfed.privacy.mechanisms`` does for one numpy update. Non-finite rows are refused with
``DataError`` naming the rows.
"""

from __future__ import annotations

import torch

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy import validate
from p2pfed.privacy.mechanisms import NoiseMode, noise_std


def clip_rows(updates: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """A copy of ``updates`` (peers × d) with every row scaled down to L2 norm ≤ S."""
    s = validate.clip_norm(clip_norm)
    if updates.ndim != 2 or not updates.is_floating_point():
        raise ConfigError(
            f"updates must be a 2-D floating tensor (peers × d), got {tuple(updates.shape)} "
            f"of {updates.dtype}"
        )
    finite = torch.isfinite(updates).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).reshape(-1).tolist()
        raise DataError(f"update rows {bad[:10]} hold NaN or infinite values; refused")
    norms = updates.double().norm(dim=1)
    scale = (s / (norms * (1 + 1e-6))).clamp(max=1.0).to(updates.dtype)
    clipped: torch.Tensor = updates * scale.unsqueeze(1)
    return clipped


def privatize_rows(
    updates: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    mode: NoiseMode,
    generator: torch.Generator,
    n_peers: int | None = None,
    min_peers: int | None = None,
) -> torch.Tensor:
    """Clip every row, then add each peer's noise (local σ·S; distributed σ·S/√m).

    ``n_peers`` is the size of the aggregation group (default: the number of rows).
    """
    mode = NoiseMode(mode)
    if mode is NoiseMode.DP_SGD:
        raise ConfigError("dp-sgd updates are already private; they are not noised again")
    clipped = clip_rows(updates, clip_norm)
    n = n_peers if n_peers is not None else int(updates.shape[0])
    std = noise_std(noise_multiplier, clip_norm, mode, n, min_peers)
    noise = torch.normal(
        0.0, std, size=tuple(clipped.shape), generator=generator, dtype=clipped.dtype
    )
    return clipped + noise

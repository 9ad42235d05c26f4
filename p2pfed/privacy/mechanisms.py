"""Clipping and Gaussian noise for model updates (numpy), in local or distributed mode.

Theory of operation. The Gaussian mechanism needs a bounded sensitivity, so an update is
first clipped to L2 norm ≤ S — as a whole, or layer by layer with bounds S_l whose
root-sum-square is the total sensitivity (``per_layer_bounds(S, L)`` splits S evenly:
S_l = S/√L). Non-finite updates are refused before anything else (``DataError``), because
clipping a NaN gives a NaN and no amount of noise makes it private; such an update is never
released.

Noise is N(0, (σ·S)²) per coordinate on what an observer sees:

- ``LOCAL``: every peer adds the full σ·S to its own update. Trusts no one; the sum of n
  updates then carries √n·σ·S, more noise than needed for the sum.
- ``DISTRIBUTED``: every peer adds a share σ·S/√m, where m is the number of peers whose
  shares are guaranteed to be in the securely aggregated sum (n, or the secure-aggregation
  threshold when dropouts are tolerated). The m shares add up to variance (σ·S)². It trusts
  the others to add their share and secure aggregation to hide each single update, whose own
  noise is too small to protect it alone.

Randomness comes from a ``NormalSource`` passed in: tests and the simulator pass a seeded
``numpy.random.Generator``; a node's releaser uses ``p2pfed.privacy.sampling.SecureGaussian``
(ChaCha20 keyed from the operating system; numpy's PCG64 is not a CSPRNG; see
docs/privacy.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy import validate

FloatArray = NDArray[np.floating]
Layers = Sequence[slice] | Sequence[tuple[int, ...]]


class NormalSource(Protocol):
    """Anything with ``Generator.normal``'s call shape (numpy, or ``SecureGaussian``)."""

    def normal(self, loc: float, scale: float, size: Any) -> Any:
        """N(loc, scale²) draws of shape ``size``."""
        ...


class NoiseMode(enum.StrEnum):
    """Who adds how much noise; recorded with every release in the ledger."""

    LOCAL = "local"
    DISTRIBUTED = "distributed"
    DP_SGD = "dp-sgd"


def check_finite(update: FloatArray, what: str = "update") -> None:
    """Raise ``DataError`` if ``update`` holds NaN or ±Inf (it must never be released)."""
    arr = np.asarray(update)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{what} must be a floating-point array, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise DataError(f"{what} holds {bad} NaN or infinite value(s) of {arr.size}; refused")


def l2_norm(update: FloatArray) -> float:
    """The L2 norm, accumulated in float64."""
    return float(np.linalg.norm(np.asarray(update, dtype=np.float64).ravel()))


def _scale_into(values: FloatArray, bound: float) -> None:
    """Scale ``values`` in place to norm ≤ bound, exactly, despite rounding in low precision."""
    norm = l2_norm(values)
    if norm <= bound:
        return
    values *= bound / norm
    shrink = 1.0 - 4 * float(np.finfo(values.dtype).eps)
    while l2_norm(values) > bound:  # float32 rounding can leave it a hair above the bound
        values *= shrink


def clip(update: FloatArray, clip_norm: float) -> FloatArray:
    """A copy of ``update`` scaled down (never up) to L2 norm ≤ S. Refuses non-finite input."""
    s = validate.clip_norm(clip_norm)
    check_finite(update)
    out = np.array(update, copy=True)
    _scale_into(out, s)
    return out


def layer_slices(layers: Layers, size: int) -> list[slice]:
    """Turn per-layer shapes (consecutive, flattened) or slices into slices of a flat vector."""
    if not layers:
        raise ConfigError("per-layer clipping needs at least one layer")
    if all(isinstance(layer, slice) for layer in layers):
        slices = [s for s in layers if isinstance(s, slice)]
    else:
        slices, start = [], 0
        for shape in layers:
            if isinstance(shape, slice) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ConfigError(
                    f"layer shapes must be tuples of non-negative ints, got {shape!r}"
                )
            n = math.prod(shape)
            slices.append(slice(start, start + n))
            start += n
        if start != size:
            raise ConfigError(f"layer shapes cover {start} values but the update has {size}")
    seen = np.zeros(size, dtype=bool)
    for s in slices:
        idx = np.arange(size)[s]
        if s.step not in (None, 1) or seen[idx].any():
            raise ConfigError(f"layer slices must be contiguous and disjoint, got {s!r}")
        seen[idx] = True
    if not seen.all():
        raise ConfigError(
            f"layer slices leave {int(size - seen.sum())} values of the update unclipped"
        )
    return slices


def per_layer_bounds(clip_norm: float, n_layers: int) -> list[float]:
    """Split a total bound S evenly: S_l = S/√L, so √(Σ S_l²) = S."""
    s = validate.clip_norm(clip_norm)
    n = validate.count("number of layers", n_layers)
    return [s / math.sqrt(n)] * n


def clip_per_layer(
    update: FloatArray, layers: Layers, clip_norms: float | Sequence[float]
) -> tuple[FloatArray, float]:
    """Clip each layer of a flat update to its own bound; returns (clipped, total sensitivity).

    ``clip_norms`` is one bound per layer, or a total S split by ``per_layer_bounds``. The
    total sensitivity √(Σ S_l²) is what the noise must be scaled to.
    """
    check_finite(update)
    flat = np.array(update, copy=True).reshape(-1)
    slices = layer_slices(layers, flat.size)
    if isinstance(clip_norms, Sequence):
        bounds = [validate.clip_norm(b) for b in clip_norms]
        if len(bounds) != len(slices):
            raise ConfigError(f"got {len(bounds)} clipping bounds for {len(slices)} layers")
    else:
        bounds = per_layer_bounds(clip_norms, len(slices))
    for s, bound in zip(slices, bounds, strict=True):
        _scale_into(flat[s], bound)
    return flat.reshape(np.shape(update)), math.sqrt(sum(b * b for b in bounds))


def noise_std(
    noise_multiplier: float,
    clip_norm: float,
    mode: NoiseMode,
    n_peers: int = 1,
    min_peers: int | None = None,
) -> float:
    """Per-coordinate standard deviation this peer adds.

    LOCAL and DP_SGD: σ·S. DISTRIBUTED: σ·S/√m with m = ``min_peers`` (the number of shares
    guaranteed in the sum, e.g. the secure-aggregation threshold) or ``n_peers``.
    """
    sigma = validate.noise_multiplier(noise_multiplier)
    s = validate.clip_norm(clip_norm)
    mode = NoiseMode(mode)
    if mode is not NoiseMode.DISTRIBUTED:
        return sigma * s
    n = validate.count("number of peers", n_peers)
    m = n if min_peers is None else validate.count("minimum peers in the sum", min_peers)
    if m > n:
        raise ConfigError(f"minimum peers in the sum ({m}) exceeds the number of peers ({n})")
    return sigma * s / math.sqrt(m)


def add_gaussian_noise(update: FloatArray, std: float, rng: NormalSource) -> FloatArray:
    """``update`` + N(0, std²) per coordinate, drawn from ``rng``, in the update's dtype."""
    check_finite(update)
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise standard deviation must be finite and ≥ 0, got {std!r}")
    arr = np.asarray(update)
    noise = np.asarray(rng.normal(0.0, std, size=arr.shape), dtype=np.float64)
    out = (arr.astype(np.float64) + noise).astype(arr.dtype)
    check_finite(out, "noised update")
    return out

"""Byzantine-robust mixing for clear gossip: self-centred clipping (ClippedGossip).

Theory of operation. Plain gossip sets x_i ← x_i + Σ_j W_ij (x_j − x_i): a neighbour that
sends a vector far away drags x_i by W_ij times that distance, without limit. ClippedGossip
(He, Karimireddy, Jaggi, "Byzantine-robust decentralized learning via ClippedGossip",
arXiv 2202.01545 / ICLR 2023, §4) clips every neighbour's *difference from this node*:

    x_i ← x_i + Σ_j W_ij · clip(x_j − x_i, τ_i),   clip(z, τ) = z · min(1, τ/‖z‖),

so whatever the neighbours send, x_i moves by at most τ_i · Σ_j W_ij, and a neighbour within
τ_i of x_i is mixed exactly as in plain gossip. The clipping is centred on the node's own
vector, which it trusts; it needs the neighbours' vectors in the clear, so it applies to clear
gossip only (secure gossip sums masked vectors; ring mode sums the whole cohort).

The radius (``clipping_radius``) is the paper's adaptive choice: τ_i is set so that the
neighbours clipped are the farthest ones whose mixing weights add up to the Byzantine weight
bound δ_i (the weight node i may give to Byzantine neighbours). Neighbours are sorted by
distance; the farthest are taken until their weight reaches δ_i, and τ_i is the distance of
the next one, so each of them is pulled in to it and everyone nearer is untouched. With
δ_i one neighbour's weight this clips exactly the farthest neighbour, the rule of the
authors' reference implementation (``scp``: τ = the second-largest distance). We could not
read the paper's text for the rule's exact wording here; the rule is implemented as the
paper's abstract and the reference code describe it (see docs/protocols.md).
``byzantine_weight`` turns an assumed number b of Byzantine neighbours into δ_i (the b
heaviest weights: the worst case).

Everything is numpy, float64 inside; bad input raises ``LocalProtocolError`` with one sentence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from p2pfed.errors import LocalProtocolError

ROBUST_RULES = ("off", "clipped-gossip")
"""Mixing rules a consortium may choose: plain gossip, or self-centred clipping."""

Vector = npt.NDArray[np.float64]


def _checked(
    self_vec: npt.NDArray[Any], neighbour_vecs: npt.NDArray[Any], weights: npt.NDArray[Any]
) -> tuple[Vector, Vector, Vector]:
    x = np.asarray(self_vec, dtype=np.float64)
    others = np.asarray(neighbour_vecs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim != 1:
        raise LocalProtocolError(f"clipped gossip needs a flat own vector, got {x.ndim}-D")
    if others.ndim != 2 or others.shape[1] != x.shape[0]:
        raise LocalProtocolError(
            f"neighbour vectors must be a (k, {x.shape[0]}) array, got shape {others.shape}"
        )
    if w.shape != (others.shape[0],):
        raise LocalProtocolError(
            f"clipped gossip needs one weight per neighbour ({others.shape[0]}), got {w.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(others)) and np.all(np.isfinite(w))):
        raise LocalProtocolError("clipped gossip refuses NaN or infinite vectors or weights")
    if np.any(w < 0) or w.sum() > 1.0 + 1e-9:
        raise LocalProtocolError(
            f"neighbour weights must be non-negative and sum to at most 1, got {w.sum():.12g}"
        )
    return x, others, w


def clip(z: npt.NDArray[Any], tau: float) -> Vector:
    """The vector z scaled to L2 norm at most ``tau``: z · min(1, τ/‖z‖)."""
    z = np.asarray(z, dtype=np.float64)
    norm = float(np.linalg.norm(z))
    if norm <= tau:
        return z.copy()
    scaled: Vector = z * (tau / norm)
    return scaled


def clipped_gossip(
    self_vec: npt.NDArray[Any],
    neighbour_vecs: npt.NDArray[Any],
    weights: npt.NDArray[Any],
    tau: float,
) -> Vector:
    """x_i + Σ_j W_ij · clip(x_j − x_i, τ), in float64.

    ``neighbour_vecs`` is a (k, d) array, one row per neighbour heard, and ``weights`` their
    k mixing weights (the self weight is what is left: 1 − Σ W_ij). Raises
    ``LocalProtocolError`` for NaN or infinite input, mismatched shapes, bad weights or a
    negative radius.
    """
    x, others, w = _checked(self_vec, neighbour_vecs, weights)
    if not (np.isfinite(tau) and tau >= 0):
        raise LocalProtocolError(f"the clipping radius must be finite and ≥ 0, got {tau}")
    out = x.copy()
    for row, weight in zip(others, w, strict=True):
        out += weight * clip(row - x, tau)
    return out


def clipping_radius(
    self_vec: npt.NDArray[Any],
    neighbour_vecs: npt.NDArray[Any],
    weights: npt.NDArray[Any],
    delta: float,
) -> float:
    """The adaptive τ_i: clip the farthest neighbours whose weights add up to ``delta``.

    Neighbours are taken from the farthest down until their weight reaches ``delta`` (at
    least one when ``delta`` > 0); τ_i is the distance of the nearest neighbour not taken, or
    0 when all are taken. ``delta`` = 0 clips nobody (τ_i = the largest distance).
    """
    x, others, w = _checked(self_vec, neighbour_vecs, weights)
    if not (np.isfinite(delta) and 0.0 <= delta < 1.0):
        raise LocalProtocolError(f"the Byzantine weight bound must be in [0, 1), got {delta}")
    if len(w) == 0:
        return 0.0
    distances = np.linalg.norm(others - x[None, :], axis=1)
    order = np.argsort(-distances, kind="stable")
    taken = 0.0
    for j in order:
        # Small slack: weights like 1/3 summed in floats must still "reach" 1/3.
        if taken >= delta - 1e-12:
            return float(distances[j])
        taken += float(w[j])
    return 0.0


def byzantine_weight(weights: npt.NDArray[Any], neighbours: int) -> float:
    """δ_i for at most ``neighbours`` Byzantine neighbours: the sum of the heaviest weights."""
    if neighbours < 0:
        raise LocalProtocolError(
            f"the number of Byzantine neighbours must be ≥ 0, got {neighbours}"
        )
    w = np.sort(np.asarray(weights, dtype=np.float64))[::-1]
    return float(min(w[:neighbours].sum(), np.nextafter(1.0, 0.0)))


def robust_mix(
    self_vec: npt.NDArray[Any],
    neighbour_vecs: npt.NDArray[Any],
    weights: npt.NDArray[Any],
    neighbours: int = 1,
) -> Vector:
    """ClippedGossip with the adaptive radius for at most ``neighbours`` Byzantine ones."""
    delta = byzantine_weight(weights, neighbours)
    tau = clipping_radius(self_vec, neighbour_vecs, weights, delta)
    return clipped_gossip(self_vec, neighbour_vecs, weights, tau)

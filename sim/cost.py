"""Byte and time model of one round's communication, with and without secure aggregation.

Theory of operation: the simulator computes exact averages; this module only *prices* them.
A model of P parameters is M = P·b bytes on the wire (b = ``bytes_per_param``, or bits/8 of
the fixed-point ring when secure aggregation is on, or the packed width / 8 with
``[compression]``: level bits + ⌈log2 n⌉ for a ring sum, level bits for a CHOCO difference).

- Gossip: peer i sends its vector to each of its s_i out-neighbours (one message round).
- Ring all-reduce (exact averaging over k active peers): each peer sends 2(k-1)/k·M bytes
  in 2(k-1) steps (Patarasuk & Yuan 2009).
- Gradient tracking sends two vectors (model and tracker) per round.

Secure aggregation (masked sums, Bonawitz et al. 2017) runs within each averaging group of g
peers — i's neighbourhood (g = d_i + 1) in gossip, the whole active cohort in all-reduce. On
top of the masked vector, each peer sends 2 public keys and 2 Shamir shares to each of the
g-1 others, and reveals up to g-1 shares at unmasking: (g-1)·(2K + 3S) bytes for key size K
and share size S; it spends 3 extra message rounds (keys, shares, unmask) and expands g
masks of M bytes with the stream cipher (``prg_gbps``). Time of a round = the slowest active
peer's (message rounds · latency + bytes / bandwidth + mask expansion).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from sim.scenario import NetworkSpec, SecAggSpec


@dataclasses.dataclass(frozen=True, slots=True)
class RoundCost:
    """Bytes each peer sent this round and the round's communication time."""

    bytes_sent: NDArray[np.float64]
    time_s: float


def round_cost(
    params: int,
    send_counts: NDArray[np.int64],
    group_sizes: NDArray[np.int64],
    active: NDArray[np.bool_],
    allreduce: bool,
    vectors: int,
    network: NetworkSpec,
    secagg: SecAggSpec,
    coordinate_bits: int = 0,
) -> RoundCost:
    """Price one round: ``send_counts``/``group_sizes`` per peer (ignored for all-reduce).

    ``coordinate_bits``: compressed coordinates' width on the wire (0: uncompressed).
    """
    n = len(active)
    k = int(active.sum())
    per_coord = secagg.bits / 8 if secagg.enabled else float(network.bytes_per_param)
    if coordinate_bits:
        per_coord = coordinate_bits / 8
    model_bytes = params * per_coord
    if allreduce:
        steps = 2 * (k - 1) if k > 1 else 0
        payload = np.full(n, 2 * (k - 1) / k * model_bytes if k > 1 else 0.0)
        groups = np.full(n, k, dtype=np.int64)
    else:
        steps = 1
        payload = send_counts.astype(np.float64) * model_bytes
        groups = group_sizes
    payload = payload * vectors
    overhead = np.zeros(n, dtype=np.float64)
    prg_s = np.zeros(n, dtype=np.float64)
    extra_rounds = 0
    if secagg.enabled:
        others = np.maximum(groups - 1, 0).astype(np.float64)
        overhead = others * (2 * secagg.key_bytes + 3 * secagg.share_bytes)
        prg_s = (others + 1) * model_bytes * vectors / (secagg.prg_gbps * 1e9)
        extra_rounds = 3
    sent = np.where(active, payload + overhead, 0.0)
    latency = network.latency_ms / 1000.0
    bandwidth = network.bandwidth_mbps * 1e6 / 8
    per_peer = (steps + extra_rounds) * latency + sent / bandwidth + prg_s
    time_s = float(per_peer[active].max()) if k > 0 and sent.any() else 0.0
    return RoundCost(sent, time_s)

"""Per-round metrics of a simulation: from the ``[N, P]`` parameters to a ``RoundRecord``.

Theory of operation: every honest peer's model is evaluated on the common test set in one
``vmap`` over peers, in chunks so the ``[peers, samples, classes]`` logits stay near two
million entries whatever N is. Accuracy and cross-entropy are per peer; the *average model*
(the mean of the honest peers' parameters) is what exact averaging would give every peer;
the consensus distance ‖X − 1x̄ᵀ‖_F / √N measures how far gossip is from that average.
Byzantine peers are left out by the caller (``Simulator.evaluate``). Nothing here draws
random numbers, so metrics never disturb a run's streams.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from sim.models import FlatModel
from sim.results import RoundRecord

_LOGITS_PER_CHUNK = 2_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """Per-peer test accuracy and loss, average-model accuracy and consensus distance."""

    accuracy: NDArray[np.float64]
    loss: NDArray[np.float64]
    average_model_accuracy: float
    consensus: float


@dataclasses.dataclass(frozen=True, slots=True)
class Traffic:
    """What a round cost on the network: bytes per peer, their running mean, time, peers."""

    bytes_sent: NDArray[np.float64]
    bytes_cumulative_mean: float
    comm_time_s: float
    active_peers: int


def evaluate(
    model: FlatModel, theta: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, classes: int
) -> Evaluation:
    """Evaluate the peers' parameters ``theta`` [N, P] on ``(x_test, y_test)``."""
    forward = torch.func.vmap(model.forward, in_dims=(0, None))
    accs: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    chunk = max(1, _LOGITS_PER_CHUNK // max(1, x_test.shape[0] * classes))
    with torch.no_grad():
        for lo in range(0, theta.shape[0], chunk):
            logits = forward(theta[lo : lo + chunk], x_test)
            accs.append((logits.argmax(dim=2) == y_test[None, :]).to(torch.float64).mean(1))
            flat = logits.reshape(-1, logits.shape[-1])
            ce = F.cross_entropy(flat, y_test.repeat(logits.shape[0]), reduction="none")
            losses.append(ce.view(logits.shape[0], -1).to(torch.float64).mean(1))
        mean = theta.mean(dim=0)
        avg_logits = model.forward(mean, x_test)
        avg_acc = float((avg_logits.argmax(dim=1) == y_test).to(torch.float64).mean())
        spread = torch.linalg.matrix_norm(theta - mean[None, :]).item()
    consensus = spread / math.sqrt(theta.shape[0])
    return Evaluation(torch.cat(accs).numpy(), torch.cat(losses).numpy(), avg_acc, consensus)


def round_record(
    t: int, ev: Evaluation, traffic: Traffic, train_loss: float, epsilon: float | None
) -> RoundRecord:
    """The metrics row of round ``t``."""
    sent = traffic.bytes_sent
    return RoundRecord(
        round=t,
        accuracy_mean=float(ev.accuracy.mean()),
        accuracy_min=float(ev.accuracy.min()),
        accuracy_max=float(ev.accuracy.max()),
        average_model_accuracy=ev.average_model_accuracy,
        test_loss_mean=float(ev.loss.mean()),
        train_loss_mean=train_loss,
        consensus_distance=ev.consensus,
        bytes_sent_mean=float(sent.mean()),
        bytes_sent_max=float(sent.max()),
        bytes_cumulative_mean=traffic.bytes_cumulative_mean,
        comm_time_s=traffic.comm_time_s,
        active_peers=traffic.active_peers,
        epsilon=epsilon,
    )

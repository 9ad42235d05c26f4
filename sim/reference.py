"""Straightforward per-peer reference implementations (the baseline the simulator must match).

Theory of operation: these are written the way one would without vectorisation — a Python
loop over peers, each copying the current weights into an ``nn.Linear``, training with
``torch.optim.SGD`` and ordinary autograd, then an average. They share no code with
``sim.engine`` beyond the data, so agreement between the two is evidence, and the benchmark
times the simulator against ``loop_round``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _linear(theta: torch.Tensor, features: int, classes: int) -> nn.Linear:
    """An ``nn.Linear`` holding a copy of the flat vector ``theta`` (weight, then bias)."""
    model = nn.Linear(features, classes).to(theta.dtype)
    with torch.no_grad():
        model.weight.copy_(theta[: features * classes].view(classes, features))
        model.bias.copy_(theta[features * classes :])
    return model


def _flat(model: nn.Linear) -> torch.Tensor:
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])


def fedavg_full_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    peers: list[torch.Tensor],
    classes: int,
    rounds: int,
    local_steps: int,
    lr: float,
) -> torch.Tensor:
    """Centralised FedAvg of logistic regression: full-batch local steps, n_k-weighted mean.

    Peers without examples are left out of the mean.

    ``peers[i]`` indexes peer i's rows of ``x``; starts from zeros; returns the final flat
    global model (weight then bias, as ``sim.models`` lays it out).
    """
    features = x.shape[1]
    global_theta = torch.zeros(features * classes + classes, dtype=x.dtype)
    for _ in range(rounds):
        updates, sizes = [], []
        for idx in peers:
            if len(idx) == 0:
                continue
            sizes.append(float(len(idx)))
            model = _linear(global_theta, features, classes)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(local_steps):
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                torch.autograd.backward(loss)
                opt.step()
            updates.append(_flat(model))
        weights = torch.tensor(sizes, dtype=x.dtype)[:, None]
        global_theta = (weights * torch.stack(updates)).sum(dim=0) / weights.sum()
    return global_theta


def loop_round(
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    peers: list[torch.Tensor],
    classes: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One FedAvg round the plain way: per peer, copy weights, one local epoch, then average.

    ``theta`` is the current global model; returns the next one: the mean of the peers'
    models weighted by their example counts n_k (a peer without examples weighs nothing).
    """
    features = x.shape[1]
    updates = []
    for idx in peers:
        model = _linear(theta, features, classes)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        order = idx[torch.randperm(len(idx), generator=generator)]
        for lo in range(0, len(order), batch_size):
            batch = order[lo : lo + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            torch.autograd.backward(loss)
            opt.step()
        updates.append(_flat(model))
    counts = torch.tensor([len(idx) for idx in peers], dtype=theta.dtype)
    return (counts[:, None] * torch.stack(updates)).sum(dim=0) / counts.sum()

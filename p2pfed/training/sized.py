"""Models sized by a parameter count, for a daemon to load by reference (big-model benchmarks).

Theory of operation: a hospital's model is declared in its config as ``[model] factory =
"p2pfed.training.sized:mlp"`` with ``args = { n_features = 30, params = 10000000 }``; the
daemon imports the function and calls it with the args (``training.models.model_from_factory``).
Both models here take the rows of a table ([batch, n_features]) and return class scores, and
solve for the width that brings their parameter count closest to ``params``:

- ``mlp``: ``depth`` hidden layers of one width w: n·w + (depth − 1)·w² + w·classes + biases.
- ``cnn``: the row read as a one-channel signal of n_features samples, two 3-tap
  convolutions of c channels with GroupNorm (BatchNorm mixes the rows of a batch, which
  DP-SGD refuses), global average pooling and a linear head: about 3c² + c·classes.

``count`` says how many parameters a model has, so a caller can report the real size.
"""

from __future__ import annotations

import math

from torch import nn

from p2pfed.errors import ConfigError


def count(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _positive_root(a: float, b: float, c: float) -> int:
    """The width w ≥ 1 nearest the positive root of a·w² + b·w + c = 0 (c < 0)."""
    if a == 0:
        return max(1, round(-c / b))
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def _check(params: int, n_features: int, classes: int) -> None:
    if params < 1 or n_features < 1 or classes < 2:
        raise ConfigError(
            f"a sized model needs params ≥ 1, n_features ≥ 1 and classes ≥ 2, got "
            f"{params}, {n_features} and {classes}"
        )


def mlp(n_features: int, params: int, classes: int = 2, depth: int = 3) -> nn.Module:
    """An MLP of ``depth`` equal hidden layers with about ``params`` parameters."""
    _check(int(params), n_features, classes)
    if depth < 1:
        raise ConfigError(f"an MLP needs at least one hidden layer, got depth {depth}")
    # n·w + w + (depth−1)(w² + w) + w·classes + classes = params
    w = _positive_root(depth - 1, n_features + depth + classes, classes - int(params))
    layers: list[nn.Module] = []
    width_in = n_features
    for _ in range(depth):
        layers += [nn.Linear(width_in, w), nn.ReLU()]
        width_in = w
    return nn.Sequential(*layers, nn.Linear(w, classes))


class _Signal(nn.Module):
    """[batch, n] rows as [batch, 1, n] one-channel signals."""

    def forward(self, x):  # type: ignore[no-untyped-def]  # nn.Module's own signature
        return x.unsqueeze(1)


def cnn(n_features: int, params: int, classes: int = 2) -> nn.Module:
    """A small 1-D CNN over a row's features with about ``params`` parameters."""
    _check(int(params), n_features, classes)
    # conv1 4c, norm 2c, conv2 3c² + c, norm 2c, head c·classes + classes
    c = _positive_root(3, 9 + classes, classes - int(params))
    groups = math.gcd(c, 8)
    return nn.Sequential(
        _Signal(),
        nn.Conv1d(1, c, 3, padding=1),
        nn.GroupNorm(groups, c),
        nn.ReLU(),
        nn.Conv1d(c, c, 3, padding=1),
        nn.GroupNorm(groups, c),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(c, classes),
    )

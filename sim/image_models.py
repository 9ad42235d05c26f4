"""Image models for the simulator: a small CNN over flat rows of square images.

Theory of operation: the simulator hands every model float rows ``[batch, features]`` (its
data sets are tables), so ``digits_cnn`` first restores each row to a one-channel
``side × side`` image (``features`` must be a square: 64 → 8×8 for scikit-learn's digits)
and then runs two 3×3 convolutions with max-pooling and a linear head. Named by reference
(``[model] factory = "sim.image_models:digits_cnn"``) it is trained like any factory model:
``torch.func.functional_call`` over one flat parameter vector per site, vmapped over sites.
"""

from __future__ import annotations

import math

from torch import nn

from p2pfed.errors import ConfigError


def digits_cnn(features: int, classes: int, channels: int = 8) -> nn.Module:
    """A CNN for rows of ``features`` = side² pixels (side divisible by 4), ``classes`` logits."""
    side = math.isqrt(features)
    if side * side != features or side % 4:
        raise ConfigError(
            f"digits_cnn needs square images with a side divisible by 4, not {features} pixels"
        )
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * (side // 4) ** 2, classes),
    )

"""Images by reference: a site's share of scikit-learn's 8×8 digits, and a small CNN.

A member's config names both (run the daemon with this folder on ``PYTHONPATH``)::

    [model]
    factory = "digits_images:small_cnn"
    args = { channels = 8 }

    [data]
    loader = "digits_images:site_digits"
    args = { site = 0, sites = 3 }

    [schema]
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

``site_digits`` returns a ``torch.utils.data.Dataset`` of ``(image [1, 8, 8], label)``
pairs: the 1,797 bundled images dealt out to ``sites`` sites by a shuffle every site draws
alike (``seed``), so the sites' shares are disjoint and together the whole set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def site_digits(site: int, sites: int = 3, seed: int = 0) -> Dataset[tuple[torch.Tensor, ...]]:
    """Site ``site``'s images (pixels scaled to [0, 1]) and labels, of ``sites`` sites."""
    from sklearn.datasets import load_digits

    if not 0 <= site < sites:
        raise ValueError(f"site {site} is not one of the {sites} sites 0..{sites - 1}")
    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))[site::sites]
    images = torch.tensor(bunch.images[order] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(images, torch.tensor(bunch.target[order], dtype=torch.int64))


def small_cnn(channels: int = 8, classes: int = 10) -> nn.Module:
    """Two 3×3 convolutions and a linear head for [batch, 1, 8, 8] images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8×8 → 4×4
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4×4 → 2×2
        nn.Flatten(),
        nn.Linear(2 * channels * 4, classes),
    )

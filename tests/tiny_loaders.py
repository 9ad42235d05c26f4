"""Data loaders that tests name by reference (``[data] loader = "tiny_loaders:..."``)."""

import torch
from torch.utils.data import Dataset, TensorDataset


def images(n: int = 60, side: int = 8, bad: str = "") -> Dataset[tuple[torch.Tensor, ...]]:
    """``n`` noise images [1, side, side] with labels 0..9 in turn; ``bad`` spoils one item."""
    x = torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 10
    if bad == "nan":
        x[7, 0, 3, 3] = float("nan")
    if bad == "label":
        y[5] = 12
    items: list[tuple[torch.Tensor, torch.Tensor]] = list(zip(x, y, strict=True))
    if bad == "shape":
        items[9] = (torch.zeros(1, side, side + 1), y[9])
    return items if bad == "shape" else TensorDataset(x, y)  # type: ignore[return-value]


def raising(site: int) -> Dataset[tuple[torch.Tensor, ...]]:
    """A loader whose own code fails."""
    raise FileNotFoundError(f"/data/site-{site}/images: no such folder")

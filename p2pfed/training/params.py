"""The shared parameter set: which tensors leave the node, flattened in a fixed order.

Theory of operation: a model's parameters split into *shared* ones, averaged across the
consortium, and *personal* ones (names starting with a configured prefix, as in FedPer),
which never leave the node. ``ParameterLayout`` fixes the order, names and shapes of the
shared set once; ``flatten`` and ``load_flat`` are the only way a model's weights become a
vector or come back, so nothing personal can be sent by accident. A received vector of the
wrong length or dtype is rejected before it touches the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from p2pfed.errors import DataError


@dataclass(frozen=True)
class ParameterLayout:
    """Names and shapes of the shared parameters, in exchange order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module, personal_prefixes: Sequence[str] = ()) -> ParameterLayout:
        """The shared parameters of ``model``: all but those under a personal prefix."""
        names, shapes = [], []
        for name, p in model.named_parameters():
            if any(name.startswith(prefix) for prefix in personal_prefixes):
                continue
            names.append(name)
            shapes.append(tuple(p.shape))
        if not names:
            raise DataError("every parameter is personal: nothing would be shared")
        return cls(tuple(names), tuple(shapes))

    @property
    def size(self) -> int:
        """Total number of shared scalars."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def slices(self) -> list[slice]:
        """Where each named tensor lies in the flat vector (for per-layer clipping)."""
        out, start = [], 0
        for shape in self.shapes:
            end = start + int(np.prod(shape))
            out.append(slice(start, end))
            start = end
        return out

    def flatten(self, model: nn.Module) -> NDArray[np.float32]:
        """The shared parameters of ``model`` as one float32 vector."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            parts = [params[name].detach().reshape(-1).to(torch.float32) for name in self.names]
        return torch.cat(parts).numpy().copy()

    def load_flat(self, model: nn.Module, vector: NDArray[np.floating]) -> None:
        """Write ``vector`` into the shared parameters of ``model`` (personal ones untouched)."""
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise DataError(f"parameter vector has shape {vector.shape}, expected ({self.size},)")
        if not np.all(np.isfinite(vector)):
            raise DataError("parameter vector holds NaN or infinite values")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, sl, shape in zip(self.names, self.slices(), self.shapes, strict=True):
                target = params[name]
                target.copy_(
                    torch.from_numpy(np.asarray(vector[sl])).reshape(shape).to(target.dtype)
                )

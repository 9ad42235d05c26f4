"""Models as functions of one flat parameter vector, so N peers are one ``[N, P]`` tensor.

Theory of operation: each model is an ordinary ``torch.nn`` module (a template that never
holds trained weights) plus the layout of its parameters in a flat vector. ``forward(theta,
x)`` slices ``theta`` into views of the right shapes and calls
``torch.func.functional_call``; because it is a pure function of ``theta`` it can be
``vmap``-ed over peers and differentiated with ``torch.func.grad``. Both models output C
logits and train with softmax cross-entropy (C = 2 for binary tasks).

``logreg`` is the daemon's own ``logistic`` module (``p2pfed.training.models.build_model``),
so simulated and real peers train one architecture. The simulator's ``mlp`` is its own:
one hidden layer with **tanh** (the daemon's ``mlp`` uses ReLU and any number of layers),
kept so that results and stored sweep points (whose digests assume unchanged numerics)
stay valid. Hence the name ``flat_model``: it returns a functional template and a flat
parameter layout, not a trainable module, and its initial weights come from
``FlatModel.init`` (N(0, scale²), zero biases), not from torch's default initialisation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from p2pfed.training.models import build_model
from sim.scenario import ModelSpec


@dataclasses.dataclass(frozen=True)
class FlatModel:
    """A module template and the layout of its parameters in a flat vector."""

    module: nn.Module
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    #: A ``[model] factory`` rebuilding the module (its initialisation gives initial weights).
    factory: Callable[[], nn.Module] | None = None

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` ([P]) shaped as the module's parameters."""
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            out[name] = theta[offset : offset + size].view(shape)
            offset += size
        return out

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of the model with parameters ``theta`` on inputs ``x`` [B, F]."""
        out = torch.func.functional_call(self.module, self.unflatten(theta), (x,))
        assert isinstance(out, torch.Tensor)
        return out

    def init(
        self, count: int, scale: float, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        """``count`` initial parameter vectors ``[count, P]``: N(0, scale²), zero biases.

        With a factory and scale 0, each vector is a fresh module's own initialisation, run
        under a torch seed drawn from ``generator`` (so the scenario seed fixes it).
        """
        if self.factory is not None and scale == 0.0:
            rows = []
            for _ in range(count):
                seed = int(torch.randint(2**62, (1,), generator=generator))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    module = self.factory()
                flat = [p.detach().reshape(-1) for _, p in module.named_parameters()]
                rows.append(torch.cat(flat).to(dtype))
            return torch.stack(rows)
        theta = torch.zeros(count, self.size, dtype=dtype)
        if scale > 0.0:
            offset = 0
            for name, shape in zip(self.names, self.shapes, strict=True):
                size = math.prod(shape)
                if not name.endswith("bias"):
                    theta[:, offset : offset + size] = scale * torch.randn(
                        count, size, generator=generator, dtype=dtype
                    )
                offset += size
        return theta


def flat_model(spec: ModelSpec, features: int, classes: int) -> FlatModel:
    """The template for ``spec`` on ``features`` inputs and ``classes`` outputs."""
    module: nn.Module
    factory = None
    if spec.factory:
        factory = _user_factory(spec.factory, features, classes)
        module = factory()
    elif spec.name == "logreg":
        module = build_model("logistic", features, classes)
    else:
        module = nn.Sequential(
            nn.Linear(features, spec.hidden), nn.Tanh(), nn.Linear(spec.hidden, classes)
        )
    names = tuple(name for name, _ in module.named_parameters())
    shapes = tuple(tuple(p.shape) for _, p in module.named_parameters())
    # The template's own tensors are never used: functional_call substitutes views of theta.
    module.requires_grad_(False)
    return FlatModel(module, names, shapes, factory)


def _user_factory(text: str, features: int, classes: int) -> Callable[[], nn.Module]:
    from p2pfed.errors import ConfigError
    from sim.sources import import_callable

    function = import_callable(text, "[model] factory")

    def build() -> nn.Module:
        try:
            module = function(features, classes)
        except Exception as exc:  # the user's code: report it in one sentence
            raise ConfigError(
                f"scenario key [model] factory {text} failed ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"scenario key [model] factory {text} returned no torch.nn.Module")
        return module

    return build


def default_init_scale(spec: ModelSpec, features: int) -> float:
    """``init_scale`` if set, else 0 for logreg and 1/sqrt(fan-in) for the MLP."""
    if spec.init_scale > 0.0 or spec.name == "logreg" or spec.factory:
        return spec.init_scale
    return 1.0 / math.sqrt(features)

"""Models a peer can train: built-ins and user factories.

Theory of operation: every model is a plain ``torch.nn.Module`` mapping a float32 batch
[b, features] to logits [b, classes]. Built-ins are ``logistic`` (one linear layer) and
``mlp`` (ReLU hidden layers). A ``module:factory`` string names any importable callable
``factory(n_features, n_classes) -> nn.Module``, for institutions bringing their own
architecture. Every peer of a consortium must build the same architecture: the shared
parameter names and shapes are checked on every exchange.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from p2pfed.errors import ConfigError

BUILTIN_MODELS = ("logistic", "mlp")


def build_model(
    kind: str,
    n_features: int,
    n_classes: int,
    hidden: Sequence[int] = (32,),
    seed: int = 0,
) -> nn.Module:
    """A fresh model with deterministic initial weights for ``seed``.

    The seed matters: every peer must start round 0 from the same weights.
    """
    if n_features < 1 or n_classes < 2:
        raise ConfigError(
            f"a model needs ≥ 1 feature and ≥ 2 classes, got {n_features}, {n_classes}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "logistic":
            return nn.Sequential(nn.Linear(n_features, n_classes))
        if kind == "mlp":
            if not hidden or any(h < 1 for h in hidden):
                raise ConfigError(
                    f"model.hidden must list positive layer widths, got {list(hidden)}"
                )
            layers: list[nn.Module] = []
            width = n_features
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, n_classes))
            return nn.Sequential(*layers)
        if ":" in kind:
            return _from_factory(kind, n_features, n_classes)
    known = ", ".join(BUILTIN_MODELS)
    raise ConfigError(f"model.kind {kind!r} is neither a built-in ({known}) nor module:factory")


def _from_factory(spec: str, n_features: int, n_classes: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.kind {spec!r} cannot be imported ({exc})") from None
    model = factory(n_features, n_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not a Module")
    return model

"""Models a peer can train: built-ins and user factories.

Theory of operation: every model is a plain ``torch.nn.Module`` mapping a float32 batch
[b, features] to logits [b, classes]. Built-ins are ``logistic`` (one linear layer) and
``mlp`` (ReLU hidden layers). A ``module:factory`` string names any importable callable
``factory(n_features, n_classes) -> nn.Module``, for institutions bringing their own
architecture. Every peer of a consortium must build the same architecture: the shared
parameter names and shapes are checked on every exchange.

The daemon's ``[model] factory = "module:function"`` with ``args`` names a model by
reference instead: ``function(**args)`` builds it (any architecture; the data's width is
not passed), and ``check_fits`` runs a batch of the data's width through it and refuses, in
one sentence, a model whose inputs or outputs do not match the data (for data from a
loader, a batch of its example shape, e.g. images [1, 8, 8]). ``[model] torchscript`` loads
a ``torch.jit.save`` file instead; a study protocol pins it by the file's SHA-256.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from p2pfed.errors import ConfigError
from p2pfed.training.options import BUILTIN_MODELS


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


def model_from_factory(spec: str, args: Mapping[str, object], seed: int = 0) -> nn.Module:
    """``function(**args)`` of ``spec`` (``module:function``), its weights seeded by ``seed``."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"[model] factory {spec!r} cannot be imported ({exc})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(**args)
        except TypeError as exc:  # wrong or missing keyword arguments
            raise ConfigError(f"[model] factory {spec!r} refused [model] args ({exc})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"[model] factory {spec!r} returned {type(model).__name__}, not a Module")
    return model


def load_torchscript(path: Path) -> nn.Module:
    """The TorchScript module saved at ``path`` (on the CPU); one sentence if it cannot be."""
    if not path.is_file():
        raise ConfigError(f"[model] torchscript {path}: no such file")
    try:
        with warnings.catch_warnings():
            # torch 2.9 deprecates TorchScript in favour of torch.export, yet still loads it
            # (files hospitals already have); the node's log is no place for that notice.
            warnings.filterwarnings(
                "ignore", r".*torch\.jit\.load.* is deprecated", DeprecationWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:  # torch raises RuntimeError, ValueError… for a foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"[model] torchscript {path} is not a TorchScript file ({first})"
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"[model] torchscript {path} holds no module")
    return module


@torch.no_grad()
def check_fits(
    model: nn.Module, spec: str, n_features: int, n_classes: int, shape: Sequence[int] = ()
) -> None:
    """``ConfigError`` unless ``model`` maps [batch, *shape or n_features] to [batch, n_classes]."""
    was_training = model.training
    model.eval()  # BatchNorm in training mode would update its statistics
    what = f"examples of shape {list(shape)}" if shape else f"{n_features} features per row"
    try:
        out = model(torch.zeros(2, *(shape or (n_features,))))
    except Exception as exc:  # a shape mismatch raises RuntimeError, others vary
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {spec!r} cannot take the data's {what} ({detail})") from None
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2, n_classes):
        raise ConfigError(
            f"model {spec!r} outputs shape {list(shape[1:])} per row, "
            f"but the data has {n_classes} classes: it must output [{n_classes}]"
        )

"""The trainer protocol: a model's full state, which tensors of it are shared, and checkpoints.

Theory of operation: a ``Trainer`` is anything with ``get_state``, ``set_state``, ``fit`` and
``evaluate`` (in the spirit of a plain torch loop and Flower's ``NumPyClient``). Its *state*
is a name → tensor mapping covering parameters **and** buffers (a ``state_dict``). A
``StatePolicy`` declares per tensor name whether it is *shared* (averaged across the
consortium, like parameters; BatchNorm running statistics by default) or *local* (personal
layers, integer counters such as ``num_batches_tracked``: they never leave the node).
``layout_of`` fixes the names and shapes of the shared tensors once; ``flatten`` and
``unflatten`` are the only way a state becomes the float32 vector a peer aggregates, or comes
back, so a local tensor cannot be sent by accident.

``fit(state, round)`` starts from the consortium's shared tensors (local ones stay the
trainer's own), trains, keeps the result as its current state and returns it with the
number of examples and its metrics. A peer calls ``fit`` and ``evaluate`` in a worker thread,
so a trainer must not touch the peer's trio objects.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

from p2pfed.durable import atomic_write, sealed_parts, unseal
from p2pfed.errors import DataError, IntegrityError
from p2pfed.training.params import ParameterLayout

State = dict[str, torch.Tensor]
"""A model's full state: parameter and buffer name → tensor (a ``state_dict``)."""


@dataclass(frozen=True)
class StatePolicy:
    """Which tensors of a state are averaged across the consortium and which stay local.

    A tensor is local when its name matches one of ``local`` (a pattern with ``*`` is a
    glob, ``"*.running_*"`` keeps BatchNorm statistics local as in FedBN; any other is a
    name prefix, ``"head."`` keeps a personal layer as in FedPer) or when it is not floating
    point (counters such as ``num_batches_tracked``: averaging them means nothing, and their
    size would dominate a clipped update). Everything else is shared, buffers included.
    """

    local: tuple[str, ...] = ()

    def shares(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether tensor ``name`` is averaged (True) or kept on this node (False)."""
        for pattern in self.local:
            if fnmatch.fnmatchcase(name, pattern) if "*" in pattern else name.startswith(pattern):
                return False
        return torch.is_floating_point(tensor)


def layout_of(state: Mapping[str, torch.Tensor], policy: StatePolicy) -> ParameterLayout:
    """The shared tensors of ``state``, in its order (the exchange order)."""
    names, shapes = [], []
    for name, tensor in state.items():
        if policy.shares(name, tensor):
            names.append(name)
            shapes.append(tuple(tensor.shape))
    if not names:
        raise DataError("every tensor of the model's state is local: nothing would be shared")
    return ParameterLayout(tuple(names), tuple(shapes))


def flatten(layout: ParameterLayout, state: Mapping[str, torch.Tensor]) -> NDArray[np.float32]:
    """The shared tensors of ``state`` as one float32 vector in ``layout`` order."""
    missing = [n for n in layout.names if n not in state]
    if missing:
        raise DataError(f"model state lacks the shared tensor {missing[0]!r}")
    with torch.no_grad():
        parts = [state[n].detach().reshape(-1).to(torch.float32).cpu() for n in layout.names]
    return torch.cat(parts).numpy()  # cat made a new tensor: nothing else shares its memory


def unflatten(layout: ParameterLayout, vector: NDArray[np.floating], *, copy: bool = True) -> State:
    """The shared tensors named by ``layout`` from a vector ``flatten`` made.

    With ``copy=False`` a writable float32 vector is not copied: the tensors are views of
    it, for a trainer that ``copies_state_in`` (one 40 MB copy fewer at 10 M parameters).
    """
    if vector.ndim != 1 or vector.shape[0] != layout.size:
        raise DataError(f"state vector has shape {vector.shape}, expected ({layout.size},)")
    if not np.all(np.isfinite(vector)):
        raise DataError("state vector holds NaN or infinite values")
    values = np.asarray(vector, dtype=np.float32)
    if copy or not values.flags.writeable:
        values = values.copy()
    flat = torch.from_numpy(values)
    return {
        name: flat[sl].reshape(shape)
        for name, sl, shape in zip(layout.names, layout.slices(), layout.shapes, strict=True)
    }


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy the tensors of ``state`` into ``module`` (others untouched); dtypes kept."""
    own = module.state_dict(keep_vars=True)
    unknown = [n for n in state if n not in own]
    if unknown:
        raise DataError(f"model has no tensor named {unknown[0]!r}")
    with torch.no_grad():
        for name, value in state.items():
            target = own[name]
            if tuple(target.shape) != tuple(value.shape):
                raise DataError(
                    f"tensor {name!r} has shape {tuple(value.shape)}, "
                    f"the model's is {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


class ModuleState:
    """The state half of a ``Trainer`` over one torch ``module`` and its ``StatePolicy``."""

    module: torch.nn.Module
    _policy: StatePolicy
    copies_state_in: bool = False
    """True when ``set_state``, ``fit`` and ``evaluate`` copy the tensors they are given into
    the module and neither keep nor write them (the caller may pass views of its own
    memory), and a partial state leaves the module's other tensors as they are
    (``evaluate({})`` scores the model as it is). Declared by the trainers that do."""

    @property
    def policy(self) -> StatePolicy:
        """Which tensors of the state are averaged (the others stay local)."""
        return self._policy

    def get_state(self) -> State:
        """A copy of the module's full ``state_dict`` (parameters and buffers)."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the given tensors into the module (others keep their values)."""
        load_into(self.module, state)


def loads_verbatim(trainer: object, layout: ParameterLayout) -> bool:
    """Whether ``trainer`` holds exactly the shared vector it was given, as given.

    True for a trainer that ``copies_state_in`` whose shared tensors are all float32: after
    ``set_state(unflatten(layout, v))`` its ``flatten`` is ``v`` bit for bit, so a caller
    need neither copy ``v`` for it nor flatten the model back.
    """
    if not getattr(trainer, "copies_state_in", False) or not isinstance(trainer, ModuleState):
        return False
    state = trainer.module.state_dict()
    return all(state[name].dtype == torch.float32 for name in layout.names)


@dataclass(frozen=True)
class FitResult:
    """What one round of local training produced."""

    state: State
    n_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    sample_rate: float = 1.0
    """Poisson rate of each DP-SGD step (1.0 when DP-SGD is off): the privacy accounting's q."""
    steps: int = 1
    """Local steps taken (the accounting composes ``steps`` DP-SGD steps)."""


@runtime_checkable
class Trainer(Protocol):
    """What a ``Peer`` needs of local training; see the module docstring."""

    @property
    def policy(self) -> StatePolicy:
        """Which tensors of the state are shared."""

    def get_state(self) -> State:
        """The current full state (parameters and buffers, local ones included)."""

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the given tensors (a partial state leaves the others as they are)."""

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        """Start from ``state``, train one round, keep and return the new state."""

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Metrics (``loss``, ``accuracy`` where they apply) of ``state`` on held-out data."""


@runtime_checkable
class Checkpointing(Protocol):
    """A trainer that saves more than its state (optimizer, generators) in a checkpoint."""

    def save_checkpoint(self, path: str | Path, round_number: int, extra: dict[str, Any]) -> None:
        """Atomically write the state after ``round_number`` with ``extra``."""

    def load_checkpoint(self, path: str | Path) -> tuple[int, dict[str, Any]]:
        """Restore what ``save_checkpoint`` wrote; (round, extra)."""


def save_checkpoint(
    trainer: Trainer, path: str | Path, round_number: int, extra: dict[str, Any]
) -> None:
    """The trainer's own checkpoint if it has one, else its full state, sealed and atomic."""
    if isinstance(trainer, Checkpointing):
        trainer.save_checkpoint(path, round_number, extra)
        return
    buffer = io.BytesIO()
    torch.save({"round": round_number, "state": trainer.get_state(), "extra": extra}, buffer)
    atomic_write(path, sealed_parts(buffer.getbuffer()))


def load_checkpoint(trainer: Trainer, path: str | Path) -> tuple[int, dict[str, Any]]:
    """Restore ``save_checkpoint``'s file into ``trainer``; raises ``IntegrityError`` if bad."""
    if isinstance(trainer, Checkpointing):
        return trainer.load_checkpoint(path)
    path = Path(path)
    try:
        payload = torch.load(
            io.BytesIO(unseal(path.read_bytes(), f"checkpoint {path}")), weights_only=True
        )
        trainer.set_state(payload["state"])
    except IntegrityError:
        raise
    except Exception as exc:  # a bad archive or a state of another model
        raise IntegrityError(f"checkpoint {path} cannot be restored ({exc})") from None
    return int(payload["round"]), dict(payload["extra"])


def update_of(
    layout: ParameterLayout, result: FitResult, weights: NDArray[np.float32]
) -> tuple[NDArray[np.float32], FitResult]:
    """``flatten(result.state) − weights`` (made in place), and ``result`` without its state.

    A round then holds neither a second float32 difference nor the trained state dict (a
    copy of the whole model) through its aggregation. ``DataError`` if training diverged.
    """
    update = flatten(layout, result.state)
    update -= weights
    if not np.isfinite(update).all():
        raise DataError("local training produced NaN or infinite tensors; lower the step size")
    return update, replace(result, state={})

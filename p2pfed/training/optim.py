"""SGD and Adam as torch's CPU single-tensor updates, without ``torch.optim``.

Why not ``torch.optim``: every ``torch.optim.Optimizer`` imports ``torch._dynamo`` the first
time it is made or stepped (``Optimizer.add_param_group`` and ``step`` are wrapped to keep
``torch.compile`` out of them). That import cost a daemon of the 10 M model about 50 MB
resident and 2 s of start-up here (docs/benchmarks.md), for a compiler p2pfed never runs.
These two classes do the same arithmetic, operation for operation, as torch's single-tensor
SGD (momentum, L2 weight decay) and Adam (bias-corrected, L2 weight decay) — the path torch
takes for CPU tensors — which ``tests/test_optim.py`` checks against ``torch.optim`` itself.

``state_dict`` has torch's layout (``state`` keyed by parameter index, ``param_groups``), so
checkpoints written with ``torch.optim`` load here and the other way round. Unlike
``torch.optim``, loading keeps this optimizer's own hyperparameters: a learning rate changed
in the config takes effect after a restart instead of the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from p2pfed.errors import IntegrityError


class Optimizer:
    """One parameter group: parameters, hyperparameters and per-parameter state."""

    _state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.Tensor], **hyper: Any) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("an optimizer needs at least one parameter")
        self.hyper = hyper
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """The state in torch's layout: per parameter by index, and one parameter group."""
        return {
            "state": {i: dict(s) for i, s in enumerate(self.state) if s},
            "param_groups": [{**self.hyper, "params": list(range(len(self.params)))}],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Per-parameter state from ``state_dict`` (ours or ``torch.optim``'s of this kind).

        ``IntegrityError`` names what does not fit: another number of parameters, an unknown
        state entry, or a tensor of another shape.
        """
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or sum(len(g.get("params", ())) for g in groups) != len(
            self.params
        ):
            raise IntegrityError(
                f"optimizer state is for another number of parameters than this model's "
                f"{len(self.params)}"
            )
        state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        for index, entry in dict(state_dict.get("state", {})).items():
            if not 0 <= int(index) < len(self.params) or not isinstance(entry, Mapping):
                raise IntegrityError(f"optimizer state names parameter {index!r}, not in the model")
            for key, value in entry.items():
                if value is None:  # torch's SGD without momentum stores none
                    continue
                if key not in self._state_keys or not isinstance(value, torch.Tensor):
                    kind = type(self).__name__
                    raise IntegrityError(f"optimizer state entry {key!r} is not {kind}'s")
                wanted = () if key == "step" else self.params[int(index)].shape
                if value.shape != wanted:
                    raise IntegrityError(
                        f"optimizer state {key!r} of parameter {index} has shape "
                        f"{tuple(value.shape)}, not {tuple(wanted)}"
                    )
                state[int(index)][key] = value.detach().clone()
        self.state = state

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        raise NotImplementedError


class SGD(Optimizer):
    """SGD as torch does it (no dampening, no Nesterov): ``buf = m·buf + g``; ``p -= lr·buf``."""

    _state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self) -> None:
        lr, momentum, decay = (self.hyper[k] for k in ("lr", "momentum", "weight_decay"))
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is None:
                continue
            grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
            if momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buf.mul_(momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-lr)


class Adam(Optimizer):
    """Adam as torch does it (bias-corrected, L2 weight decay, no AMSGrad)."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self) -> None:
        lr, eps, decay = (self.hyper[k] for k in ("lr", "eps", "weight_decay"))
        beta1, beta2 = self.hyper["betas"]
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is None:
                continue
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1**step)
            denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-step_size)

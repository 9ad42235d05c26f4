"""Per-peer gradients with ordinary autograd, so round 1 does not import torch's compiler.

Theory of operation: ``torch.func.grad`` enters ``torch._dynamo.compiled_autograd`` on
every call, and the first call imports ``torch._dynamo`` — seconds of imports (most of a
20-round job's wall time at N = 256) for a feature the simulator never uses. The peers'
losses are independent (peer i's loss reads only row i of θ), so the gradient of their
*sum* with respect to the ``[N, P]`` matrix θ is, row by row, each peer's own gradient:
one ``vmap``-ed forward and one ordinary ``torch.autograd.grad`` give what
``vmap(grad_and_value(loss))`` gives, with the same kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def batched_grad_and_value(
    loss: Callable[..., torch.Tensor], in_dims: tuple[int | None, ...]
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``vmap(grad_and_value(loss), in_dims)`` for a loss whose first argument is θ_i."""
    forward = torch.func.vmap(loss, in_dims=in_dims)

    def grad_and_value(theta: torch.Tensor, *rest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            detached = [r.detach() if isinstance(r, torch.Tensor) else r for r in rest]
            losses = forward(leaf, *detached)
            (grads,) = torch.autograd.grad(losses.sum(), leaf)
        return grads, losses.detach()

    return grad_and_value

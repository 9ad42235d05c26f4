"""Example-level DP-SGD for local training, with per-sample gradients from ``torch.func``.

Theory of operation. One DP-SGD step (Abadi et al. 2016) on a Poisson-sampled batch:

1. per-sample gradients g_i, computed by ``vmap(grad(loss_of_one_example))`` over a
   functional call of the model (``torch.func``) — one batched backward pass, no hooks;
2. each g_i scaled down to ‖g_i‖ ≤ C (the norm taken over all trainable parameters);
3. their sum plus N(0, (σ·C)²) per coordinate, from the noise source passed in: a seeded
   ``torch.Generator`` in tests, ``SecureGaussian`` (ChaCha20) on a node;
4. divided by the *expected* batch size q·N (not the drawn size, which is itself private
   under Poisson sampling), written to ``param.grad``; the caller's optimiser then steps.

Each step is one Poisson-subsampled Gaussian step (σ, q) for the accountant; T local steps
are recorded as ``steps=T`` when the trained update is released. ``poisson_sample`` draws the
batch: each of N examples in independently with probability q, so batches vary in size and
may be empty (then only noise is applied, as the analysis assumes).

Why ``torch.func`` and not Opacus: it is part of torch (no extra dependency, no version
lock between Opacus and torch 2.13), works on any plain ``nn.Module`` without wrapping the
model, optimiser and data loader, and the whole mechanism fits in one readable function
that we test directly. Opacus adds hooks, module validators and its own accountants that we
do not need, as our accountants live in ``p2pfed.privacy.accountants``. Modules that mix
examples in a batch (BatchNorm) break per-example privacy and are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy import validate
from p2pfed.privacy.sampling import SecureGaussian

#: Where DP-SGD noise comes from: a torch generator (tests) or the CSPRNG (nodes).
NoiseSource = torch.Generator | SecureGaussian

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def poisson_sample(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson sample of ``range(n)``: each in with probability q."""
    size = validate.count("data set size", n)
    q = validate.sample_rate(sample_rate)
    keep = torch.rand(size, generator=generator) < q
    return torch.nonzero(keep, as_tuple=False).reshape(-1)


@dataclass(frozen=True, slots=True)
class DPSGDStepStats:
    """What one step did (for logs; none of it is private except ``batch_size``)."""

    batch_size: int
    clipped_fraction: float
    mean_grad_norm: float


def refuse_batch_mixing(model: nn.Module) -> None:
    """Raise ``ConfigError`` if ``model`` holds a BatchNorm (it mixes the examples of a batch)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"module {name or type(module).__name__!r} is a BatchNorm, which mixes examples "
                "and breaks example-level DP; use GroupNorm or LayerNorm"
            )


def dp_sgd_step(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: NoiseSource,
    expected_batch_size: float,
    optimizer: torch.optim.Optimizer | None = None,
) -> DPSGDStepStats:
    """Set ``param.grad`` to a clipped, noised mean gradient of ``batch``; step if given.

    ``loss_fn(output, target)`` must reduce over the batch it is given (it is called on
    batches of one). Raises ``ConfigError`` for bad parameters or a BatchNorm, and
    ``DataError`` when a per-sample gradient is NaN or infinite.
    """
    c = validate.clip_norm(clip_norm)
    sigma = validate.noise_multiplier(noise_multiplier)
    expected = float(expected_batch_size)
    if not expected > 0:
        raise ConfigError(f"expected batch size must be > 0, got {expected_batch_size!r}")
    refuse_batch_mixing(model)
    inputs, targets = batch
    if inputs.shape[0] != targets.shape[0]:
        raise DataError(f"batch has {inputs.shape[0]} inputs but {targets.shape[0]} targets")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    n = int(inputs.shape[0])

    if n > 0:

        def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        per_sample: dict[str, torch.Tensor] = vmap(grad(loss_one), in_dims=(None, 0, 0))(
            params, inputs, targets
        )
        flat = torch.cat([g.reshape(n, -1) for g in per_sample.values()], dim=1)
        if not bool(torch.isfinite(flat).all()):
            raise DataError("a per-sample gradient holds NaN or infinite values; step refused")
        # norms in float64 and a 1e-6 margin: the scaled float32 gradient stays ≤ C
        norms = flat.double().norm(dim=1)
        scale = (c / (norms * (1 + 1e-6))).clamp(max=1.0).to(flat.dtype)
        summed = {k: torch.einsum("i,i...->...", scale, g) for k, g in per_sample.items()}
        stats = DPSGDStepStats(n, float((norms > c).double().mean()), float(norms.mean()))
    else:
        summed = {k: torch.zeros_like(p) for k, p in params.items()}
        stats = DPSGDStepStats(0, 0.0, 0.0)

    named = dict(model.named_parameters())
    for k, total in summed.items():
        if isinstance(generator, SecureGaussian):
            drawn = generator.normal(0.0, sigma * c, tuple(total.shape))
            noise = torch.from_numpy(drawn).to(total.dtype)
        else:
            noise = torch.normal(
                0.0, sigma * c, size=total.shape, generator=generator, dtype=total.dtype
            )
        named[k].grad = (total + noise) / expected
    if optimizer is not None:
        optimizer.step()
    return stats

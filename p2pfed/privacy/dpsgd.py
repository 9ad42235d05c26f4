"""Example-level DP-SGD for local training, at model scale: per-example norms, not gradients.

Theory of operation. One DP-SGD step (Abadi et al. 2016) on a Poisson-sampled batch:

1. one forward pass of the whole batch with the per-example losses ℓ_i kept apart (the loss
   function is called on each example's output, so a loss cannot mix examples);
2. a first backward pass of Σℓ_i gives each layer's output gradients, from which
   ``p2pfed.privacy.ghost`` computes the per-example gradient norms ‖g_i‖ without forming
   g_i (ghost clipping) for Linear, Conv1d/2d, Embedding, LayerNorm and GroupNorm; any other
   layer with parameters adds its share from ``torch.func`` per-example gradients, computed
   in micro-batches;
3. a second backward pass of Σ w_i·ℓ_i with w_i = min(1, C/‖g_i‖) leaves the clipped sum
   Σ w_i g_i in ``param.grad``, so ‖w_i g_i‖ ≤ C bounds what one example moves;
4. one draw of N(0, (σ·C)²) per coordinate is added to that sum, from the noise source
   passed in: a seeded ``torch.Generator`` in tests, ``SecureGaussian`` (ChaCha20) on a node;
5. the result is divided by the *expected* batch size q·N (not the drawn size, which is
   itself private under Poisson sampling); the caller's optimiser then steps.

Each step is one Poisson-subsampled Gaussian step (σ, q) for the accountant; T local steps
are recorded as ``steps=T`` when the trained update is released. ``poisson_sample`` draws the
batch: each of N examples in independently with probability q, so batches vary in size and
may be empty (then only noise is applied, as the analysis assumes).

Memory is that of a plain step plus B numbers per layer: no per-example gradient of a ghosted
layer exists, everything is float32. Why not Opacus: it wraps the model, optimiser and data
loader and brings its own accountants; ours live in ``p2pfed.privacy.accountants`` and this
step works on any plain ``nn.Module``. Opacus is the anchor of ``p2pfed bench dpsgd``.
Modules that mix examples in a batch (BatchNorm) are refused, and so are layers that run
twice per forward pass, share a parameter, or see a batch that is not on their first axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy import ghost, validate
from p2pfed.privacy.sampling import SecureGaussian

#: Where DP-SGD noise comes from: a torch generator (tests) or the CSPRNG (nodes).
NoiseSource = torch.Generator | SecureGaussian

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Values per float64 draw of the CSPRNG (bounds its transient memory on a large model).
_NOISE_CHUNK = 1 << 20


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
    """Raise ``ConfigError`` if DP-SGD cannot bound ``model``'s per-example gradients.

    A BatchNorm mixes the examples of a batch; a parameter shared by two layers or a sparse
    embedding cannot be clipped per example. One sentence names the layer.
    """
    ghost.plan(model)


def add_noise(total: torch.Tensor, generator: NoiseSource, std: float) -> torch.Tensor:
    """``total`` plus N(0, std²) per coordinate, drawn a chunk at a time into one buffer.

    Chunks keep the transient memory at a few MB whatever the model's size (a 10 M-parameter
    layer's noise would otherwise be a second copy of its gradient).
    """
    out = total if total.is_contiguous() else total.contiguous()
    flat = out.view(-1)
    # The CSPRNG's maths is float64.
    dtype = torch.float64 if isinstance(generator, SecureGaussian) else flat.dtype
    buffer = torch.empty(min(_NOISE_CHUNK, flat.numel()), dtype=dtype)
    for start in range(0, flat.numel(), _NOISE_CHUNK):
        part = flat[start : start + _NOISE_CHUNK]
        noise = buffer[: part.numel()]
        if isinstance(generator, SecureGaussian):  # torch's maths on the CSPRNG's uniforms
            generator.standard_into(noise, torch, torch.from_numpy)
            part.add_(noise, alpha=std / 2)  # the four draws' sum is 2·N(0, 1)
        else:
            part.add_(noise.normal_(0.0, std, generator=generator))
    return out


def _per_example_losses(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    out = model(inputs)
    try:  # one batched call; each example's loss still sees that example alone
        losses: torch.Tensor = vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(
            out, targets
        )
    except RuntimeError:  # a loss vmap cannot batch (Python control flow on values)
        losses = torch.stack([loss_fn(out[i : i + 1], targets[i : i + 1]) for i in range(len(out))])
    return losses


def _clip_weights(
    model: nn.Module, loss_fn: LossFn, batch: tuple[torch.Tensor, torch.Tensor], layers: ghost.Plan
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Per-example losses (graph kept), squared gradient norms (float64), layers not run."""
    inputs, targets = batch
    n = int(inputs.shape[0])
    sq = torch.zeros(n, dtype=torch.float64)
    if layers.fallback:
        ghost.refuse_random_fallback(model, layers)
        sq += ghost.fallback_sq_norms(model, loss_fn, inputs, targets, layers.fallback)
    with ghost.Capture(layers.ghosted, n) as capture:
        losses = _per_example_losses(model, loss_fn, inputs, targets)
        sq += capture.sq_norms(losses.sum())  # first backward pass: no weight gradients
        unused = [k for k in layers.ghosted if k not in capture.inputs]
    return losses, sq, unused


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
    batches of one). Raises ``ConfigError`` for bad parameters or a layer DP-SGD cannot
    bound, and ``DataError`` when a per-sample gradient is NaN or infinite.
    """
    c = validate.clip_norm(clip_norm)
    sigma = validate.noise_multiplier(noise_multiplier)
    expected = float(expected_batch_size)
    if not expected > 0:
        raise ConfigError(f"expected batch size must be > 0, got {expected_batch_size!r}")
    layers = ghost.plan(model)
    inputs, targets = batch
    if inputs.shape[0] != targets.shape[0]:
        raise DataError(f"batch has {inputs.shape[0]} inputs but {targets.shape[0]} targets")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    n = int(inputs.shape[0])
    stats = DPSGDStepStats(0, 0.0, 0.0)
    if n > 0:
        losses, sq, unused = _clip_weights(model, loss_fn, batch, layers)
        if not bool(torch.isfinite(sq).all()):
            raise DataError("a per-sample gradient holds NaN or infinite values; step refused")
        norms = sq.sqrt()
        # a 1e-6 margin: the float32 clipped gradient stays ≤ C despite rounding
        scale = (c / (norms * (1 + 1e-6))).clamp(max=1.0)
        # second backward pass: the clipped sum Σ w_i g_i lands in param.grad
        torch.autograd.backward((losses * scale.to(losses.dtype)).sum())
        _refuse_hidden_use(layers, unused, params)
        stats = DPSGDStepStats(n, float((norms > c).double().mean()), float(norms.mean()))
    with torch.no_grad():
        for p in params:
            total = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = add_noise(total, generator, sigma * c).div_(expected)
    if optimizer is not None:
        optimizer.step()
    return stats


def _refuse_hidden_use(layers: ghost.Plan, unused: list[str], params: list[nn.Parameter]) -> None:
    """A layer whose forward never ran yet whose weights got a gradient was used elsewhere."""
    for name in unused:
        if any(p.grad is not None for p in layers.ghosted[name].parameters()):
            for p in params:  # no unnoised sum is left behind in .grad
                p.grad = None
            raise ConfigError(
                f"layer {name!r} never ran but its parameters got a gradient (used outside "
                "its forward, as in MultiheadAttention's out_proj); DP-SGD cannot clip them"
            )

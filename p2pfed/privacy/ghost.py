"""Per-example gradient norms without per-example gradients ("ghost" / fast gradient clipping).

Theory of operation. For a layer whose weight gradient for example i is a sum of outer
products, G_i = Σ_t g_t a_tᵀ (activations a_t in, output gradients g_t out, t over sequence
positions or image patches), the squared norm is Σ_{t,s} (a_t·a_s)(g_t·g_s): two T×T Gram
matrices instead of a d_out×d_in matrix per example (Goodfellow 2015; Li et al. 2022; Opacus
≥ 1.5). ``_outer_sq`` picks, per layer and shape, the cheaper of that "ghost norm" and the
direct per-example gradient (T² against d_in·d_out), in chunks of examples so memory stays
bounded. Conv1d/Conv2d become such a product by ``unfold``; Embedding's Gram matrix of
one-hot rows is the equality of token ids; LayerNorm and GroupNorm have small weights whose
per-example gradients are formed directly. Every other module holding parameters is a
*fallback*: its parameters' per-example gradients come from ``torch.func`` over the whole
model, a micro-batch at a time.

``Capture`` installs one forward hook per ghosted layer: it keeps the layer's input and
output and passes a clone of the output on, and the first backward pass asks for the
gradients of exactly those kept outputs, so autograd computes no weight gradient in it. The
clone (B·d_out values, small beside the weights) keeps the right output when a later
``ReLU(inplace=True)`` rewrites what it was given, which ``register_full_backward_hook``
refuses. All hooks are removed when the ``with`` block ends, also on an exception.
Everything stays in the model's dtype (float32); only the B per-example sums are added up
in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.hooks import RemovableHandle

from p2pfed.errors import ConfigError

#: Bytes one chunk of per-example tensors may take (direct gradients, Gram matrices).
CHUNK_BYTES = 64 << 20

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _chunks(n: int, per_example: int) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // max(1, 4 * per_example))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _outer_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖Σ_t g_t a_tᵀ‖² per example of ``a`` (B, T, d_in) and ``g`` (B, T, d_out)."""
    n, t, d_in = a.shape
    d_out = g.shape[2]
    if t == 1:
        return a.square().sum((1, 2)) * g.square().sum((1, 2))
    out = a.new_empty(n)
    if 2 * t * t <= d_in * d_out:  # ghost norm: two T×T Gram matrices per example
        for s in _chunks(n, 2 * t * t):
            out[s] = (a[s] @ a[s].transpose(1, 2) * (g[s] @ g[s].transpose(1, 2))).sum((1, 2))
    else:  # the per-example gradient itself is smaller than the Gram matrices
        for s in _chunks(n, d_in * d_out):
            out[s] = (g[s].transpose(1, 2) @ a[s]).square().sum((1, 2))
    return out


def _wants(p: torch.Tensor | None) -> bool:
    return p is not None and p.requires_grad


def _linear(m: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    gs = g.reshape(n, -1, g.shape[-1])
    sq = x.new_zeros(n)
    if _wants(m.weight):
        sq += _outer_sq(x.reshape(n, -1, x.shape[-1]), gs)
    if _wants(m.bias):
        sq += gs.sum(1).square().sum(1)
    return sq


def _conv(m: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, groups = x.shape[0], m.groups
    sq = x.new_zeros(n)
    if _wants(m.bias):
        sq += g.reshape(n, g.shape[1], -1).sum(2).square().sum(1)
    if not _wants(m.weight):
        return sq
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    one_d = isinstance(m, nn.Conv1d)
    kernel, dil, stride = ((1, *v) if one_d else v for v in (m.kernel_size, m.dilation, m.stride))
    c_out = m.out_channels // groups
    per = (x[0].numel() * kernel[0] * kernel[1]) + g[0].numel()
    for s in _chunks(n, per):
        padded = F.pad(x[s], m._reversed_padding_repeated_twice, mode=mode)
        if one_d:
            padded = padded.unsqueeze(2)
        cols = F.unfold(padded, kernel, dilation=dil, stride=stride)  # (b, C·k, L)
        b, positions = cols.shape[0], cols.shape[2]
        a = cols.reshape(b, groups, -1, positions).transpose(2, 3)
        a = a.reshape(b * groups, positions, -1)
        gg = g[s].reshape(b, groups, c_out, positions).transpose(2, 3)
        sq[s] += _outer_sq(a, gg.reshape(b * groups, positions, c_out)).reshape(b, groups).sum(1)
    return sq


def _embedding(m: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n = idx.shape[0]
    ids = idx.reshape(n, -1)
    gs = g.reshape(n, ids.shape[1], -1)
    if m.padding_idx is not None:  # the padding row gets no gradient
        gs = gs * (ids != m.padding_idx).unsqueeze(2).to(gs.dtype)
    sq = g.new_empty(n)
    t = ids.shape[1]
    for s in _chunks(n, 2 * t * t):
        same = (ids[s].unsqueeze(2) == ids[s].unsqueeze(1)).to(gs.dtype)
        sq[s] = (same * (gs[s] @ gs[s].transpose(1, 2))).sum((1, 2))
    return sq


def _affine_sq(
    m: nn.Module, xhat: torch.Tensor, g: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    n = g.shape[0]
    sq = g.new_zeros(n)
    if _wants(getattr(m, "weight", None)):
        sq += (g * xhat).reshape(shape).sum(1).reshape(n, -1).square().sum(1)
    if _wants(getattr(m, "bias", None)):
        sq += g.reshape(shape).sum(1).reshape(n, -1).square().sum(1)
    return sq


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
    return _affine_sq(m, xhat, g, (x.shape[0], -1, *m.normalized_shape))


def _group_norm(m: nn.GroupNorm, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    xhat = F.group_norm(x, m.num_groups, None, None, m.eps)
    n, c = x.shape[0], x.shape[1]
    # (n, C, rest) summed over rest: put the channel axis last so the shared sum is axis 1
    last = (xhat.reshape(n, c, -1).transpose(1, 2), g.reshape(n, c, -1).transpose(1, 2))
    return _affine_sq(m, *last, (n, -1, c))


_HANDLERS: dict[type[nn.Module], Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
}


def _trainable(m: nn.Module, recurse: bool) -> bool:
    return any(p.requires_grad for p in m.parameters(recurse=recurse))


@dataclass
class Plan:
    """Which layers are ghost-clipped, and which parameters fall back to ``torch.func``."""

    ghosted: dict[str, nn.Module] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)


def plan(model: nn.Module) -> Plan:
    """Sort ``model``'s trainable parameters; ``ConfigError`` for a layer DP-SGD cannot bound."""
    out, owner = Plan(), dict[int, str]()

    def claim(name: str, module: nn.Module) -> None:
        for pname, p in module.named_parameters():
            if p.requires_grad and owner.setdefault(id(p), name) != name:
                raise ConfigError(
                    f"parameter {pname!r} is shared by layers {owner[id(p)]!r} and {name!r}; "
                    "DP-SGD needs each trainable parameter in one layer"
                )

    def visit(name: str, module: nn.Module) -> None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"module {name or type(module).__name__!r} is a BatchNorm, which mixes examples "
                "and breaks example-level DP; use GroupNorm or LayerNorm"
            )
        if isinstance(module, nn.Embedding) and (module.sparse or module.scale_grad_by_freq):
            raise ConfigError(
                f"embedding {name!r} has sparse or scale_grad_by_freq set, which DP-SGD cannot "
                "clip per example (scale_grad_by_freq mixes examples); turn both off"
            )
        if type(module) in _HANDLERS and _trainable(module, True):
            claim(name, module)
            out.ghosted[name] = module
        elif _trainable(module, False):
            claim(name, module)
            prefix = f"{name}." if name else ""
            out.fallback += [prefix + k for k, p in module.named_parameters() if p.requires_grad]
        else:
            for child, sub in module.named_children():
                visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return out


def refuse_random_fallback(model: nn.Module, layers: Plan) -> None:
    """``ConfigError`` if a fallback layer meets dropout: ``torch.func`` cannot replay its masks."""
    if layers.fallback and model.training:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                raise ConfigError(
                    f"parameter {layers.fallback[0]!r} needs per-example gradients by "
                    f"torch.func, which cannot replay the dropout masks of {name!r}; remove "
                    "the dropout or use layers DP-SGD clips directly (Linear, Conv, "
                    "Embedding, LayerNorm, GroupNorm)"
                )


def fallback_sq_norms(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, names: list[str]
) -> torch.Tensor:
    """Squared per-example gradient norms over ``names`` by ``torch.func``, in micro-batches."""
    named = dict(model.named_parameters())
    mine = {k: named[k].detach() for k in names}
    rest = {k: p.detach() for k, p in named.items() if k not in mine}
    rest.update({k: b.detach() for k, b in model.named_buffers()})

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**p, **rest}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
    n = inputs.shape[0]
    sq = torch.zeros(n, dtype=torch.float64)
    for s in _chunks(n, sum(p.numel() for p in mine.values())):
        grads = per_grad(mine, inputs[s], targets[s])
        for g in grads.values():
            sq[s] += g.reshape(g.shape[0], -1).square().sum(1).double()
    return sq


class Capture:
    """Forward hooks on the ghosted layers of one step; squared norms after the first backward.

    Each hook keeps the layer's input and its output, and hands the rest of the model a
    clone of that output: a later in-place operation (``ReLU(inplace=True)``) then changes
    the clone, so the kept output still names the layer's own result, and the first backward
    pass can stop there, computing no weight gradient at all.
    """

    def __init__(self, layers: dict[str, nn.Module], batch: int) -> None:
        self.layers, self.batch = layers, batch
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> Capture:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            x = args[0]
            if name in self.inputs:
                raise ConfigError(
                    f"layer {name!r} ran twice in one forward pass; DP-SGD's per-example "
                    "norms need each layer with trainable parameters to run once per step"
                )
            if x.ndim == 0 or x.shape[0] != self.batch:
                raise ConfigError(
                    f"layer {name!r} got {tuple(x.shape)} whose first axis is not the batch of "
                    f"{self.batch}; DP-SGD needs batch-first inputs in every layer"
                )
            self.inputs[name] = x.detach()
            if not (isinstance(output, torch.Tensor) and output.requires_grad):
                return None
            self.outputs[name] = output
            return output.clone()

        return hook

    def sq_norms(self, total_loss: torch.Tensor) -> torch.Tensor:
        """First backward pass, to the kept outputs only; per-example squared norms (float64)."""
        sq = torch.zeros(self.batch, dtype=torch.float64)
        if not self.outputs:
            return sq
        names = list(self.outputs)
        grads = torch.autograd.grad(
            total_loss, [self.outputs[k] for k in names], retain_graph=True, allow_unused=True
        )
        for name, g in zip(names, grads, strict=True):
            if g is not None:  # None: the layer's output did not reach the loss
                layer = self.layers[name]
                sq += _HANDLERS[type(layer)](layer, self.inputs[name], g).double()
        return sq

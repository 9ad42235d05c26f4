"""Ghost clipping against a naive per-example loop, and the attacks its protections stop.

Each property draws a small layer or model and a batch, and checks that DP-SGD's per-example
gradient norms and its clipped sum equal those of a loop over single examples (float64) to
1e-5 relative. The clipped sum is read back exactly: the step runs with a seeded noise
generator, and the same draws are replayed and subtracted. Runtime ~40 s on 2 loaded cores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from p2pfed.errors import ConfigError
from p2pfed.privacy import dpsgd, ghost

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
SIGMA = 1e-3


def naive(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor, c: float):
    """Per-example norms and the clipped sum by one backward pass per example, in float64."""
    ref = copy.deepcopy(model).double()
    params = [p for p in ref.parameters() if p.requires_grad]
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    norms, total = [], [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(loss(ref(x[i : i + 1]), y[i : i + 1]), params)
        norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
        norms.append(norm)
        for t, g in zip(total, grads, strict=True):
            t += g * min(1.0, c / (norm * (1 + 1e-6) or 1.0))
    return torch.tensor(norms, dtype=torch.float64), total


def ours(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor, c: float):
    """DP-SGD's norms and clipped sum (the seeded noise replayed and subtracted)."""
    _, sq, _ = dpsgd._clip_weights(model, loss, (x, y), ghost.plan(model))
    dpsgd.dp_sgd_step(
        model,
        loss,
        (x, y),
        clip_norm=c,
        noise_multiplier=SIGMA,
        generator=torch.Generator().manual_seed(7),
        expected_batch_size=1.0,
    )
    replay = torch.Generator().manual_seed(7)
    sums = []
    for p in model.parameters():
        if p.requires_grad:
            noise = dpsgd.add_noise(torch.zeros_like(p), replay, SIGMA * c)
            sums.append(p.grad.double() - noise.double())  # type: ignore[union-attr]
    return sq.sqrt(), sums


def check(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor) -> None:
    norms_ref, _ = naive(model, loss, x, y, 1.0)
    c = float(norms_ref.median()) or 1.0  # about half the examples are clipped
    norms_ref, sum_ref = naive(model, loss, x, y, c)
    norms, sums = ours(model, loss, x, y, c)
    torch.testing.assert_close(norms, norms_ref, rtol=1e-5, atol=1e-9)
    for got, want in zip(sums, sum_ref, strict=True):
        # atol covers float32 rounding of the noise subtracted (σ·C = 1e-3·C)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * c)


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, target)


def batch_for(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.no_grad():
        shape = model(x).shape
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1000))


@given(
    n=st.integers(1, 5),
    t=st.sampled_from([None, 1, 3, 6]),
    d_in=st.integers(1, 6),
    d_out=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_linear_norms_and_clipped_sum_equal_a_per_example_loop(n, t, d_in, d_out, bias, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=bias)
    x = torch.randn(n, d_in) if t is None else torch.randn(n, t, d_in)
    check(layer, mse, x, batch_for(layer, x, seed))


@given(
    dims=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.sampled_from([0, 1, "same"]),
    dilation=st.integers(1, 2),
    mode=st.sampled_from(["zeros", "reflect", "circular"]),
    bias=st.booleans(),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_conv_norms_and_clipped_sum_equal_a_per_example_loop(
    dims, groups, kernel, stride, padding, dilation, mode, bias, seed
):
    torch.manual_seed(seed)
    if padding == "same":
        stride = 1
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    layer = cls(
        2 * groups, 2 * groups + groups, kernel, stride, padding, dilation, groups, bias, mode
    )
    x = torch.randn(3, 2 * groups, *([7] * dims))
    check(layer, mse, x, batch_for(layer, x, seed))


@given(
    n=st.integers(1, 4),
    t=st.integers(1, 6),
    vocab=st.integers(2, 5),
    padding=st.booleans(),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_embedding_norms_and_clipped_sum_equal_a_per_example_loop(n, t, vocab, padding, seed):
    torch.manual_seed(seed)
    layer = nn.Embedding(vocab, 3, padding_idx=0 if padding else None)
    ids = torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))
    check(layer, mse, ids, batch_for(layer, ids, seed))


@given(
    kind=st.sampled_from(["layer", "group", "prelu", "custom"]),
    affine=st.booleans(),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_norm_layers_and_fallback_layers_equal_a_per_example_loop(kind, affine, seed):
    torch.manual_seed(seed)
    x = torch.randn(3, 4, 5) * 3 + 1
    layer: nn.Module = {
        "layer": lambda: nn.LayerNorm(5, elementwise_affine=affine),
        "group": lambda: nn.GroupNorm(2, 4, affine=affine),
        "prelu": lambda: nn.PReLU(4),  # not ghosted: per-example gradients by torch.func
        "custom": lambda: Scale(5),
    }[kind]()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape))  # away from the identity the defaults start at
    model = nn.Sequential(nn.Linear(5, 5), layer, nn.Tanh())
    check(model, mse, x, batch_for(model, x, seed))


class Scale(nn.Module):
    """A layer with its own parameter and no ghost rule (the fallback path)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(36, 3),
    )


class TextModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids))).mean(1)


def inputs_for(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    if name == "mlp":
        return torch.randn(n, 6, generator=g)
    if name == "cnn":
        return torch.randn(n, 1, 8, 8, generator=g)
    return torch.randint(0, 7, (n, 5), generator=g)


MODELS = {"mlp": mlp, "cnn": cnn, "text": TextModel}


@given(name=st.sampled_from(sorted(MODELS)), n=st.integers(1, 6), seed=st.integers(0, 99))
@SETTINGS
def test_mixed_models_equal_a_per_example_loop(name, n, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = inputs_for(name, n, g)
    check(MODELS[name](), nn.functional.cross_entropy, x, torch.randint(0, 3, (n,), generator=g))


def test_a_loss_vmap_cannot_batch_is_called_per_example_and_still_matches() -> None:
    def branching(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 2.0 if float(target.sum()) > 0 else 1.0  # Python on values: no vmap
        return weight * nn.functional.mse_loss(out, target)

    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(5, 6)
    check(model, branching, x, batch_for(model, x, 0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_outlier_a_million_times_larger_moves_the_sum_by_at_most_c(name: str) -> None:
    """The attack: one poisoned example whose gradient is ~10^6 times the others'."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = MODELS[name]()
    x = inputs_for(name, 9, g)
    y = torch.randn(9, 3, generator=g)
    y[-1] *= 1e6  # the outlier's loss gradient is ~10^6 times larger
    c = 0.5
    _, sq, _ = dpsgd._clip_weights(model, mse, (x, y), ghost.plan(model))
    assert float(sq[-1].sqrt()) > 1e5 * float(sq[:-1].sqrt().max())
    _, without = ours(model, mse, x[:-1], y[:-1], c)
    _, with_outlier = ours(model, mse, x, y, c)
    moved = math.sqrt(
        sum(float((a - b).square().sum()) for a, b in zip(with_outlier, without, strict=True))
    )
    assert moved <= c * (1 + 1e-5)
    assert moved > 0.9 * c  # it was clipped to C, not dropped


def test_noise_on_a_batch_has_sigma_c_over_the_expected_size() -> None:
    model = nn.Linear(300, 100)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 300, generator=g), torch.randn(8, 100, generator=g)
    dpsgd.dp_sgd_step(
        model,
        mse,
        (x, y),
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=torch.Generator().manual_seed(4),
        expected_batch_size=4.0,
    )
    assert model.weight.grad is not None
    signal = 8 * 2.0 / 4 / math.sqrt(model.weight.numel())  # ≤ per-coordinate RMS of the sum
    noise = float(model.weight.grad.std())
    assert noise == pytest.approx(1.5 * 2.0 / 4, rel=0.03 + signal)


def test_batchnorm_is_refused_in_one_sentence_naming_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ConfigError, match=r"^module '1' is a BatchNorm, [^\n]*GroupNorm") as err:
        dpsgd.refuse_batch_mixing(model)
    assert err.value.args[0].count(".") == 0 or err.value.args[0].endswith("LayerNorm")


class Hidden(nn.Module):
    """Uses a child layer's weights without calling it (as MultiheadAttention does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.lin.weight, self.lin.bias)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.lin(x))


class SeqFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.t()).t()  # the layer sees (features, batch)


def step(model: nn.Module, x: torch.Tensor) -> None:
    dpsgd.dp_sgd_step(
        model,
        mse,
        (x, torch.zeros(4, 3)),
        clip_norm=1.0,
        noise_multiplier=1.0,
        generator=torch.Generator(),
        expected_batch_size=4.0,
    )


def test_layers_dp_sgd_cannot_bound_are_refused_and_no_hook_is_left() -> None:
    models = (Twice(), SeqFirst(), Hidden())
    with pytest.raises(ConfigError, match="'lin' ran twice in one forward pass"):
        step(models[0], torch.ones(4, 3))
    with pytest.raises(ConfigError, match=r"'lin' got \(3, 4\) whose first axis is not the batch"):
        step(models[1], torch.ones(4, 3))
    with pytest.raises(ConfigError, match="'lin' never ran but its parameters got a gradient"):
        step(models[2], torch.ones(4, 3))
    assert all(p.grad is None for p in models[2].parameters())  # no unnoised sum left
    for model in models:
        assert all(not m._forward_hooks for m in model.modules())
    dropout = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.PReLU(), nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="cannot replay the dropout masks of '1'"):
        step(dropout, torch.ones(4, 3))
    step(dropout.eval(), torch.ones(4, 3))  # no dropout at evaluation: accepted
    shared = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5))
    shared[1].weight = shared[0].weight  # tied weights: two layers, one parameter
    with pytest.raises(ConfigError, match="is shared by layers '0' and '1'"):
        ghost.plan(shared)
    plan = ghost.plan(nn.MultiheadAttention(3, 1, batch_first=True))
    assert not plan.ghosted and "out_proj.weight" in plan.fallback  # all by torch.func

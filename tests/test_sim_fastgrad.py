"""Per-peer gradients by plain autograd: equal to vmap(grad) and free of torch's compiler."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.fastgrad import batched_grad_and_value
from sim.models import flat_model
from sim.scenario import ModelSpec


@settings(max_examples=25, deadline=None)
@given(
    peers=st.integers(1, 6),
    batch=st.integers(1, 5),
    features=st.integers(1, 5),
    classes=st.integers(2, 4),
    model=st.sampled_from(["logreg", "mlp"]),
    mu=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_gradients_equal_vmap_of_grad(
    peers: int, batch: int, features: int, classes: int, model: str, mu: float, seed: int
) -> None:
    flat = flat_model(ModelSpec(name=model, hidden=3), features, classes)
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(peers, flat.size, generator=gen, dtype=torch.float64)
    anchor = theta + 0.1 * torch.randn(peers, flat.size, generator=gen, dtype=torch.float64)
    x = torch.randn(peers, batch, features, generator=gen, dtype=torch.float64)
    y = torch.randint(classes, (peers, batch), generator=gen)
    w = (torch.rand(peers, batch, generator=gen) > 0.3).to(torch.float64)

    def loss(
        t: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        a: torch.Tensor,
        m: float,
    ) -> torch.Tensor:
        logits = flat.forward(t, xb)
        ce = logits.logsumexp(-1) - logits.gather(-1, yb[:, None])[:, 0]
        return (ce * wb).sum() / wb.sum().clamp_min(1.0) + 0.5 * m * ((t - a) ** 2).sum()

    dims = (0, 0, 0, 0, 0, None)
    expected = torch.func.vmap(torch.func.grad_and_value(loss), in_dims=dims)(
        theta, x, y, w, anchor, mu
    )
    got = batched_grad_and_value(loss, dims)(theta, x, y, w, anchor, mu)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not got[0].requires_grad and not got[1].requires_grad


@pytest.mark.slow
def test_a_simulation_never_imports_torchs_compiler() -> None:
    code = (
        "import sys\n"
        "from sim.overrides import with_overrides\nfrom sim.scenario import Scenario\n"
        "from sim.sweep import run_point\n"
        "run_point(with_overrides(Scenario(), {'n': 4, 'rounds': 2, 'model.name': 'mlp',"
        " 'algorithm': 'gradient_tracking'}))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

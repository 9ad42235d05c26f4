import math

import pytest
import torch
from torch import nn

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy.dpsgd import dp_sgd_step, poisson_sample
from p2pfed.privacy.sampling import ChaChaSource, SecureGaussian


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g) * 5, torch.randint(0, 3, (n,), generator=g)


def _manual_per_sample(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[list[torch.Tensor]]:
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.detach().clone() for p in model.parameters()])  # type: ignore[union-attr]
    return out


def test_per_sample_clipping_matches_manual_loop_without_noise_scale() -> None:
    model = _model()
    x, y = _data(16)
    c = 0.1
    per = _manual_per_sample(model, x, y)
    expected = []
    for j in range(len(per[0])):
        acc = torch.zeros_like(per[0][j])
        for grads in per:
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
            acc += grads[j] * min(1.0, c / (norm + 1e-12))
        expected.append(acc / 16)
    # a tiny σ leaves the clipped mean visible
    stats = dp_sgd_step(
        model,
        nn.functional.cross_entropy,
        (x, y),
        clip_norm=c,
        noise_multiplier=1e-9,
        generator=torch.Generator().manual_seed(0),
        expected_batch_size=16,
    )
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    assert stats.batch_size == 16
    assert stats.clipped_fraction > 0.5  # inputs were scaled up so most gradients clip


def test_noise_has_sigma_c_over_batch_and_is_seeded() -> None:
    model = nn.Linear(200, 50)
    x = torch.zeros(0, 200)
    y = torch.zeros(0, 50)
    g = torch.Generator().manual_seed(5)
    stats = dp_sgd_step(
        model,
        nn.functional.mse_loss,
        (x, y),
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=g,
        expected_batch_size=4,
    )
    assert stats.batch_size == 0
    grad = model.weight.grad
    assert grad is not None
    assert float(grad.std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.03)
    first = grad.clone()
    dp_sgd_step(
        model,
        nn.functional.mse_loss,
        (x, y),
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=torch.Generator().manual_seed(5),
        expected_batch_size=4,
    )
    torch.testing.assert_close(model.weight.grad, first)


def test_a_members_chacha20_noise_has_sigma_c_over_batch_too() -> None:
    # The node's noise source takes its own path (torch maths on CSPRNG uniforms, scaled
    # by σC/2 for the four draws' sum): its spread must be exactly σC/q·N as well.
    model = nn.Linear(400, 250)
    dp_sgd_step(
        model,
        nn.functional.mse_loss,
        (torch.zeros(0, 400), torch.zeros(0, 250)),
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=SecureGaussian(ChaChaSource.from_seed(8)),
        expected_batch_size=4,
    )
    grad = model.weight.grad
    assert grad is not None and grad.dtype == torch.float32
    assert float(grad.std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.01)  # 10^5 values
    assert abs(float(grad.mean())) < 0.01


def test_training_with_optimizer_reduces_loss() -> None:
    model = _model()
    x, y = _data(256)
    x = x / 5
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(x), y))
    for _ in range(40):
        idx = poisson_sample(256, 0.25, g)
        dp_sgd_step(
            model,
            nn.functional.cross_entropy,
            (x[idx], y[idx]),
            clip_norm=1.0,
            noise_multiplier=0.5,
            generator=g,
            expected_batch_size=64,
            optimizer=opt,
        )
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model(x), y)) < before


def test_poisson_sample_rate_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [len(poisson_sample(1000, 0.1, g)) for _ in range(200)]
    assert sum(sizes) / len(sizes) == pytest.approx(100, rel=0.05)
    assert len(set(sizes)) > 5  # sizes vary, as Poisson sampling requires
    with pytest.raises(ConfigError, match=r"q must lie in \(0, 1\]"):
        poisson_sample(10, 0.0, g)
    assert torch.equal(poisson_sample(5, 1.0, g), torch.arange(5))


def test_refuses_batchnorm_nan_and_bad_parameters() -> None:
    x, y = _data(4)
    g = torch.Generator().manual_seed(0)
    bn = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    with pytest.raises(ConfigError, match="BatchNorm"):
        dp_sgd_step(
            bn,
            nn.functional.cross_entropy,
            (x, y),
            clip_norm=1,
            noise_multiplier=1,
            generator=g,
            expected_batch_size=4,
        )
    model = _model()
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        dp_sgd_step(
            model,
            nn.functional.cross_entropy,
            (bad, y),
            clip_norm=1,
            noise_multiplier=1,
            generator=g,
            expected_batch_size=4,
        )
    with pytest.raises(ConfigError, match="σ must be > 0"):
        dp_sgd_step(
            model,
            nn.functional.cross_entropy,
            (x, y),
            clip_norm=1,
            noise_multiplier=0,
            generator=g,
            expected_batch_size=4,
        )
    with pytest.raises(ConfigError, match="clipping norm"):
        dp_sgd_step(
            model,
            nn.functional.cross_entropy,
            (x, y),
            clip_norm=-1,
            noise_multiplier=1,
            generator=g,
            expected_batch_size=4,
        )


def test_single_example_gradient_is_clipped_to_c() -> None:
    model = _model()
    x, y = _data(8)
    for i in range(8):
        dp_sgd_step(
            model,
            nn.functional.cross_entropy,
            (x[i : i + 1] * 100, y[i : i + 1]),
            clip_norm=0.01,
            noise_multiplier=1e-12,
            generator=torch.Generator().manual_seed(i),
            expected_batch_size=1,
        )
        total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))  # type: ignore[union-attr]
        assert total <= 0.01

import math

import pytest
import torch

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy.batched import clip_rows, privatize_rows
from p2pfed.privacy.mechanisms import NoiseMode


def test_clip_rows_bounds_each_row_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(500, 257, generator=g) * torch.logspace(-3, 3, 500).unsqueeze(1)
    out = clip_rows(updates, 1.5)
    norms = out.double().norm(dim=1)
    assert bool((norms <= 1.5).all())
    small = updates.double().norm(dim=1) < 1.4
    torch.testing.assert_close(out[small], updates[small])  # inside rows untouched (to 1e-6)


def test_distributed_rows_sum_to_sigma_s() -> None:
    g = torch.Generator().manual_seed(1)
    zeros = torch.zeros(16, 40_000, dtype=torch.float64)
    out = privatize_rows(
        zeros, clip_norm=0.5, noise_multiplier=2.0, mode=NoiseMode.DISTRIBUTED, generator=g
    )
    assert float(out.sum(dim=0).var()) == pytest.approx((2.0 * 0.5) ** 2, rel=0.03)
    assert float(out[0].std()) == pytest.approx(1.0 / math.sqrt(16), rel=0.03)
    local = privatize_rows(
        zeros, clip_norm=0.5, noise_multiplier=2.0, mode=NoiseMode.LOCAL, generator=g
    )
    assert float(local[3].std()) == pytest.approx(1.0, rel=0.03)


def test_rows_refuse_nan_and_bad_shapes() -> None:
    bad = torch.ones(4, 3)
    bad[2, 1] = math.inf
    with pytest.raises(DataError, match=r"rows \[2\]"):
        clip_rows(bad, 1.0)
    with pytest.raises(ConfigError, match="2-D floating"):
        clip_rows(torch.ones(3), 1.0)
    with pytest.raises(ConfigError, match="already private"):
        privatize_rows(
            torch.ones(2, 2),
            clip_norm=1,
            noise_multiplier=1,
            mode=NoiseMode.DP_SGD,
            generator=torch.Generator(),
        )

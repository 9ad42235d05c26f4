"""The privacy layer a node wraps around what it sends: check, clip, record, then noise.

Theory of operation. ``PrivateReleaser.release(round, update)`` is the only door through
which an update leaves a node under DP. In order: refuse a non-finite update (nothing is
recorded, nothing released); clip it (whole or per layer); ``ledger.reserve`` the release,
which refuses past the budget and returns only after the record is durable; draw this
peer's Gaussian noise (local: σ·S; distributed: σ·S/√m) and return the noised copy. The
caller never sees a noised update whose cost is not on disk. Float noise comes from
``SecureGaussian`` (ChaCha20) unless a generator is injected.

With a ``DDGPlan`` (distributed mode inside secure aggregation) the noise is integer noise
added in the ring by the plan's ``DiscreteGaussianEncoder``; the releaser then clips,
records the round at the plan's worst case (m contributors, c of them colluding: the
noise multiplier 1/√(2ρ) of its zCDP bound) and returns the clipped update for the encoder.
A sum with fewer than m inputs is aborted by the secure round before any reveal; a sum with
more holds more noise than was charged (overcounting is safe). For DP-SGD-trained updates the
noise was added during training, so the releaser records (σ, q, steps) and returns the update
unchanged.
"""

from __future__ import annotations

import numpy as np

from p2pfed.errors import ConfigError
from p2pfed.privacy import validate
from p2pfed.privacy.ddg import DDGPlan
from p2pfed.privacy.ledger import PrivacyLedger, Release
from p2pfed.privacy.mechanisms import (
    FloatArray,
    Layers,
    NoiseMode,
    NormalSource,
    add_gaussian_noise,
    check_finite,
    clip,
    clip_per_layer,
    noise_std,
)
from p2pfed.privacy.sampling import SecureGaussian


class PrivateReleaser:
    """Clip, account and noise each outgoing update; see the module docstring."""

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        clip_norm: float,
        noise_multiplier: float,
        mode: NoiseMode,
        n_peers: int = 1,
        min_peers: int | None = None,
        layers: Layers | None = None,
        rng: NormalSource | None = None,
        discrete: DDGPlan | None = None,
    ) -> None:
        self.ledger = ledger
        self.clip_norm = validate.clip_norm(clip_norm)
        self.noise_multiplier = validate.noise_multiplier(noise_multiplier)
        self.mode = NoiseMode(mode)
        self.n_peers, self.min_peers, self.layers = n_peers, min_peers, layers
        noise_std(self.noise_multiplier, self.clip_norm, self.mode, n_peers, min_peers)
        self._rng: NormalSource = rng if rng is not None else SecureGaussian()
        self.discrete = discrete
        if discrete is not None and (
            self.mode is not NoiseMode.DISTRIBUTED
            or (discrete.clip_norm, discrete.noise_multiplier)
            != (self.clip_norm, self.noise_multiplier)
        ):
            raise ConfigError(
                "a discrete Gaussian plan needs distributed mode and the releaser's clip norm "
                "and noise multiplier"
            )

    def release(
        self, round: int, update: FloatArray, *, sample_rate: float = 1.0, steps: int = 1
    ) -> FloatArray:
        """The update to send for ``round``, after its cost is durably recorded.

        ``sample_rate`` and ``steps`` describe what one release composes: (1, 1) for a
        cross-silo round where every peer takes part; for DP-SGD, the local Poisson rate and
        step count. Raises ``DataError`` (non-finite update) or ``BudgetExceededError``;
        in both cases nothing is released.
        """
        check_finite(update)
        if self.mode is NoiseMode.DP_SGD:
            self.ledger.reserve(self._release(round, sample_rate, steps))
            return np.array(update, copy=True)
        if self.layers is None:
            clipped, sensitivity = clip(update, self.clip_norm), self.clip_norm
        else:
            clipped, sensitivity = clip_per_layer(update, self.layers, self.clip_norm)
        if self.discrete is not None:
            sigma = self.discrete.release_noise_multiplier()
            self.ledger.reserve(self._release(round, sample_rate, steps, sigma))
            return clipped  # the encoder adds the integer noise in the ring
        std = noise_std(self.noise_multiplier, sensitivity, self.mode, self.n_peers, self.min_peers)
        self.ledger.reserve(self._release(round, sample_rate, steps))
        return add_gaussian_noise(clipped, std, self._rng)

    def _release(
        self, round: int, sample_rate: float, steps: int, sigma: float | None = None
    ) -> Release:
        return Release(
            round=round,
            noise_multiplier=self.noise_multiplier if sigma is None else sigma,
            sample_rate=sample_rate,
            steps=steps,
            clip_norm=self.clip_norm,
            mode=self.mode,
        )

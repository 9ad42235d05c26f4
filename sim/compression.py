"""Compressed updates in the simulator: the daemon's quantiser, EF-SGD and CHOCO-SGD gossip.

Theory of operation. ``[compression] scheme = "q8"`` (``"q4"``) rounds what a site sends
with ``p2pfed.secagg.compression``'s stochastic quantiser: 2^8 (2^4) levels on [−clip, clip],
unbiased, error below one step Δ = 2·clip / (2^bits − 1).

- Exact means (``fedavg``, ``fedprox``): site i sends its update u_i = y_i − x quantised,
  q_i = Q(u_i + e_i), and with ``error_feedback`` keeps e_i ← u_i + e_i − q_i for its next
  round (EF-SGD, Karimireddy et al. 2019; Stich et al. 2018) — the daemon's rule. The mean
  of the q_i is what the daemon's packed secure ring decodes; its words are
  bits + ⌈log2 n⌉ wide on the wire, which is what the byte model charges.
- Gossip: CHOCO-SGD (Koloskova et al. 2019). Every site keeps public copies x̂ of its
  neighbours' models (and its own), sends q_i = Q(x_i − x̂_i) (``bits`` a coordinate), all
  copies take x̂_i ← x̂_i + q_i, and x_i ← x_i + γ·Σ_j W_ij (x̂_j − x̂_i) = x_i + γ(Wx̂ − x̂)_i.
  CHOCO compensates errors through x̂ itself (no separate residual). The differences travel
  in clear, so the scenario refuses it with ``[secagg] enabled``.

Quantisation happens after clipping and noise: it is post-processing and leaves DP as is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from p2pfed.secagg.compression import COMPRESSIONS, QuantisedEncoder, sum_width
from p2pfed.settings import check, positive

_WHAT = "scenario"


@dataclasses.dataclass(frozen=True, slots=True)
class CompressionSpec:
    """What sites send, compressed: ``none``, ``q8`` or ``q4`` (``p2pfed.secagg``'s quantiser)."""

    scheme: str = "none"
    #: Each coordinate of an update (gossip: of x_i − x̂_i) is clipped to ±clip, then rounded.
    clip: float = 0.1
    #: EF-SGD's residual, carried to the next round (exact means only).
    error_feedback: bool = True
    #: CHOCO-SGD's consensus step γ (gossip only).
    gamma: float = 0.5

    def validate(self) -> None:
        check(
            self.scheme in COMPRESSIONS,
            "[compression] scheme",
            f"must be one of {', '.join(COMPRESSIONS)}",
            _WHAT,
        )
        positive(self.clip, "[compression] clip", _WHAT)
        check(0.0 < self.gamma <= 1.0, "[compression] gamma", "must be in (0, 1]", _WHAT)

    @property
    def level_bits(self) -> int:
        """Bits of one quantised coordinate (0: no compression)."""
        return COMPRESSIONS[self.scheme]


class Compressor:
    """One scenario's compression state: EF residuals, or CHOCO's public copies x̂."""

    def __init__(self, spec: CompressionSpec, n: int, theta: torch.Tensor, seed: int) -> None:
        self.spec = spec
        self.n = n
        self.encoder = QuantisedEncoder(spec.clip, spec.level_bits, n)
        self.rng = np.random.default_rng(seed)
        self.residual = torch.zeros_like(theta)
        self.copies: torch.Tensor | None = None  # CHOCO's x̂, from the first gossip round

    def coordinate_bits(self, exact: bool) -> int:
        """Wire bits of one coordinate: a packed sum word, or one quantised difference."""
        return sum_width(self.spec.level_bits, self.n) if exact else self.spec.level_bits

    def quantise(self, values: torch.Tensor) -> torch.Tensor:
        """Q(values) row by row (what the daemon decodes from its words)."""
        flat = values.detach().to(torch.float64).numpy().reshape(-1)
        words = self.encoder.encode(flat, self.rng, 1)
        decoded = self.encoder.decode(words).reshape(values.shape)
        return torch.from_numpy(decoded).to(values.dtype)

    def exact(
        self, start: torch.Tensor, sent: torch.Tensor, members: np.typing.NDArray[np.bool_]
    ) -> torch.Tensor:
        """The models the members send with their updates quantised (EF-SGD if enabled)."""
        rows = torch.from_numpy(members)
        update = sent - start
        intended = update + self.residual if self.spec.error_feedback else update
        quantised = self.quantise(intended)
        if self.spec.error_feedback:
            kept = intended - quantised
            self.residual = torch.where(rows[:, None], kept, self.residual)
        return torch.where(rows[:, None], start + quantised, sent)

    def choco(self, w_torch: torch.Tensor, start: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        """One CHOCO-SGD gossip step from the locally trained models ``sent``.

        The copies start at the first round's models (the shared, seed-derived initial
        model, known to every site), not at zero.
        """
        if self.copies is None:
            self.copies = start.clone()
        self.copies = self.copies + self.quantise(sent - self.copies)
        mixed = w_torch @ self.copies
        return sent + self.spec.gamma * (mixed - self.copies)

"""What Byzantine peers send instead of their honest release.

Theory of operation: an attacker is fixed for the run (``Simulator.byzantine``) and alters
what it sends every round; the engine then mixes as usual, so an attack is seen exactly as
honest peers would see it. Update attacks change the update Δ_i before it is applied:
``sign_flip`` sends −Δ_i, ``scale`` sends c·Δ_i. Model attacks replace the model sent:
``flip_model`` sends −θ_i' (the "bit flipping" attacker of He, Karimireddy and Jaggi's
ClippedGossip study), ``large_norm`` sends θ_i' + c·u: u is a random unit direction drawn
once per run from the fault stream (a fixed one such as all-ones can lie where a softmax
model does not look: adding a constant to every logit changes no prediction), c the
``attack_scale``, so the vector sent is as far from the honest models as c says.
"""

from __future__ import annotations

import numpy as np
import torch

from sim.scenario import MODEL_ATTACKS, FaultSpec


def poison_update(delta: torch.Tensor, byzantine: torch.Tensor, faults: FaultSpec) -> torch.Tensor:
    """Δ with the update attack applied to the Byzantine rows (unchanged for model attacks)."""
    if faults.attack in MODEL_ATTACKS:
        return delta
    factor = -1.0 if faults.attack == "sign_flip" else faults.attack_scale
    return torch.where(byzantine[:, None], factor * delta, delta)


def attack_direction(
    faults: FaultSpec, theta: torch.Tensor, rng: np.random.Generator
) -> torch.Tensor | None:
    """The unit direction of the ``large_norm`` attack (None for the other attacks)."""
    if faults.byzantine == 0 or faults.attack != "large_norm":
        return None
    u = rng.normal(size=theta.shape[1])
    return torch.from_numpy(u / np.linalg.norm(u)).to(theta.dtype)


def poison_model(
    sent: torch.Tensor, byzantine: torch.Tensor, faults: FaultSpec, direction: torch.Tensor | None
) -> torch.Tensor:
    """The models sent, with the model attack applied to the Byzantine rows."""
    if faults.attack == "flip_model":
        return torch.where(byzantine[:, None], -sent, sent)
    if faults.attack == "large_norm" and direction is not None:
        push = faults.attack_scale * direction
        return torch.where(byzantine[:, None], sent + push[None, :], sent)
    return sent

"""What a config may say about local training, importable without torch.

Theory of operation: the daemon checks its whole config (``p2pfed.config``) before anything
heavy loads, so an operator's typo or missing file fails at once; the names and settings it
checks against live here, free of torch, and the trainer and the model builder take them
from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from p2pfed.errors import ConfigError

BUILTIN_MODELS = ("logistic", "mlp")
OPTIMIZERS = ("sgd", "adam")
TORCHSCRIPT_PREFIX = "torchscript sha256:"


def torchscript_reference(path: Path) -> str:
    """What a study protocol's model kind says for this file: its SHA-256."""
    if not path.is_file():
        raise ConfigError(f"[model] torchscript {path}: no such file")
    return TORCHSCRIPT_PREFIX + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class TrainingConfig:
    """How a peer trains locally each round."""

    local_epochs: int = 1
    local_steps: int = 0
    """If > 0: exactly this many minibatch steps per round instead of ``local_epochs``."""
    batch_size: int = 32
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    fedprox_mu: float = 0.0
    personal_prefixes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (self.local_epochs >= 1, "[training] local_epochs must be ≥ 1"),
            (self.local_steps >= 0, "[training] local_steps must be ≥ 0"),
            (self.batch_size >= 1, "[training] batch_size must be ≥ 1"),
            (self.learning_rate > 0, "[training] learning_rate must be positive"),
            (self.optimizer in OPTIMIZERS, f"[training] optimizer must be one of {OPTIMIZERS}"),
            (0 <= self.momentum < 1, "[training] momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "[training] weight_decay must be ≥ 0"),
            (self.fedprox_mu >= 0, "[training] fedprox_mu must be ≥ 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

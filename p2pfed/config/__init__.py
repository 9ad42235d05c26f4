"""The peer daemon's configuration (``config.toml``), parsed and checked in one place.

Theory of operation: every table of the file maps onto one frozen dataclass
(``config.sections``), parsed by ``p2pfed.settings`` — so the accepted keys are exactly their
fields, and an unknown key, a wrong type or a bad value ends in one ``ConfigError`` naming
the key. ``Config`` is the whole file and checks what spans tables. Relative paths are
resolved against the folder holding the config file, so an institution folder can be moved
as a whole. ``render_default`` (``config.template``) writes the commented file ``p2pfed
init`` creates. Loading a config imports neither torch nor libp2p.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from p2pfed.config.sections import (
    MODES,
    PRIVACY_MODES,
    WEIGHTINGS,
    DataSection,
    GovernanceSection,
    MetricsSection,
    ModelSection,
    NetworkSection,
    NodeSection,
    PrivacySection,
    RoundsSection,
    SchemaSection,
    SecAggSection,
    StudySection,
    ValidationSection,
)
from p2pfed.config.template import DEFAULT_TEMPLATE, render_default
from p2pfed.settings import check, parse, read_toml
from p2pfed.training.options import TrainingConfig

__all__ = [
    "DEFAULT_TEMPLATE",
    "MODES",
    "PRIVACY_MODES",
    "WEIGHTINGS",
    "Config",
    "DataSection",
    "GovernanceSection",
    "MetricsSection",
    "ModelSection",
    "NetworkSection",
    "NodeSection",
    "PrivacySection",
    "RoundsSection",
    "SchemaSection",
    "SecAggSection",
    "StudySection",
    "ValidationSection",
    "load_config",
    "render_default",
]


@dataclass(frozen=True)
class Config:
    """A whole ``config.toml``."""

    node: NodeSection
    network: NetworkSection = field(default_factory=NetworkSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(builtin="breast_cancer"))
    schema: SchemaSection = field(default_factory=SchemaSection)
    study: StudySection = field(default_factory=StudySection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    governance: GovernanceSection = field(default_factory=GovernanceSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    base_dir: str = ""
    """Folder relative paths are resolved against (set by ``load_config``, not the file)."""

    def validate(self) -> None:
        if self.rounds.robust != "off":
            check(
                self.rounds.mode == "gossip" and not self.secagg.enabled,
                "[rounds] robust",
                f"= {self.rounds.robust} needs [rounds] mode = gossip with [secagg] enabled = "
                "false: clipping needs visible updates",
            )
        if self.rounds.weighting == "examples":
            check(
                self.rounds.mode == "ring" and self.privacy.mode == "off",
                "[rounds] weighting",
                '= "examples" needs [rounds] mode = ring and [privacy] mode = off (the exact '
                "total of examples in each sum would be released without noise, and a "
                "weight would scale the noise calibrated for one update)",
            )
        # Distributed noise shares are safe only inside an exact secure sum.
        if self.privacy.mode == "distributed":
            ok = self.rounds.mode == "ring" and self.secagg.enabled
            check(
                ok,
                "[privacy] mode",
                "= distributed needs [rounds] mode = ring with [secagg] enabled (otherwise a "
                "small noise share can be exposed); use local or dp-sgd",
            )

    @property
    def accountant(self) -> str:
        """The accountant that governs the ledger.

        The distributed discrete Gaussian is bounded in zCDP, which the RDP accountant
        composes exactly; the PLD accountant would treat it as a Gaussian, unproven.
        """
        if self.privacy.mode == "distributed" and self.secagg.enabled:
            return "rdp"
        return self.privacy.accountant

    def path(self, relative: str) -> Path:
        """``relative`` resolved against the config file's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else Path(self.base_dir or ".") / p


def load_config(path: str | Path) -> Config:
    """Read and check a daemon config file; ``ConfigError`` names any bad key."""
    path = Path(path)
    raw = read_toml(path)
    check(
        "base_dir" not in raw,
        "base_dir",
        "is not a setting (paths are relative to the config file)",
    )
    config = parse(Config, raw)
    return dataclasses.replace(config, base_dir=str(path.parent.resolve()))

"""The ``[privacy]`` table of a node's TOML configuration.

Theory of operation: the daemon's configuration file holds one ``[privacy]`` table (the
daemon's own parser on main, ``p2pfed.config.PrivacySection``, reads the same keys with the
same defaults); this module reads and checks just that table, so
``p2pfed privacy report --config`` works on a daemon config file without importing the
daemon. Keys (documented in docs/privacy.md), all optional:

    mode              "distributed" (default), "local", "dp-sgd" or "off"
    clip_norm         L2 bound S on each update (1.0)
    noise_multiplier  σ per release (1.0)
    delta             δ, in (0, 1) (1e-5)
    epsilon_budget    total ε the institution allows, > 0 (10.0)
    accountant        "pld" (default, tightest) or "rdp"
    ledger            ledger file, relative to the config file's folder
                      ("state/privacy.ledger")
    sample_rate       q per accountant step (1.0: every member in every round)
    steps_per_round   accountant steps per release (1: one noised update per round; the
                      number of local DP-SGD steps in dp-sgd mode)

Unknown keys are refused, so a misspelt key is never silently ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError, LocalError
from p2pfed.privacy import validate
from p2pfed.privacy.accountants import ACCOUNTANT_KINDS, DEFAULT_ACCOUNTANT, AccountantKind

MODES = ("distributed", "local", "dp-sgd", "off")
_KEYS = {
    "mode",
    "clip_norm",
    "ledger",
    "epsilon_budget",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps_per_round",
}


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """A checked ``[privacy]`` table."""

    ledger: Path
    epsilon_budget: float = 10.0
    delta: float = 1e-5
    accountant: AccountantKind = DEFAULT_ACCOUNTANT
    noise_multiplier: float = 1.0
    sample_rate: float = 1.0
    steps_per_round: int = 1
    mode: str = "distributed"
    clip_norm: float = 1.0

    @classmethod
    def from_table(cls, table: dict[str, Any], base: Path) -> PrivacyConfig:
        """Check a parsed ``[privacy]`` table; relative ledger paths resolve against ``base``."""
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) in [privacy]: {', '.join(unknown)}")
        ledger = table.get("ledger", "state/privacy.ledger")
        if not isinstance(ledger, str) or not ledger:
            raise ConfigError(f"[privacy] ledger must be a non-empty path string, got {ledger!r}")
        accountant = table.get("accountant", DEFAULT_ACCOUNTANT)
        if accountant not in ACCOUNTANT_KINDS:
            raise ConfigError(
                f"[privacy] accountant must be one of {', '.join(ACCOUNTANT_KINDS)}, "
                f"got {accountant!r}"
            )
        mode = table.get("mode", "distributed")
        if mode not in MODES:
            raise ConfigError(f"[privacy] mode must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(
            ledger=base / Path(ledger).expanduser(),
            epsilon_budget=validate.epsilon(table.get("epsilon_budget", 10.0)),
            delta=validate.delta(table.get("delta", 1e-5)),
            accountant=accountant,
            noise_multiplier=validate.noise_multiplier(table.get("noise_multiplier", 1.0)),
            sample_rate=validate.sample_rate(table.get("sample_rate", 1.0)),
            steps_per_round=validate.count("steps_per_round", table.get("steps_per_round", 1)),
            mode=mode,
            clip_norm=validate.clip_norm(table.get("clip_norm", 1.0)),
        )

    @classmethod
    def load(cls, path: str | Path) -> PrivacyConfig:
        """Read the ``[privacy]`` table of a TOML file."""
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LocalError(f"cannot read config {p}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {p} is not valid TOML: {exc}") from exc
        table = doc.get("privacy")
        if not isinstance(table, dict):
            raise ConfigError(f"config {p} has no [privacy] table")
        return cls.from_table(table, p.parent)

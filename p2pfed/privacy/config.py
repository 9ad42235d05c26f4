"""The ``[privacy]`` table of a node's TOML configuration.

Theory of operation: the daemon's configuration file will hold one ``[privacy]`` table;
this module reads and checks just that table, so ``p2pfed privacy report --config`` and the
daemon agree on it. Keys (documented in docs/privacy.md):

    ledger            path of the ledger file (relative to the config file's folder)
    epsilon_budget    total ε the institution allows (> 0)
    delta             δ (in (0, 1))
    accountant        "pld" (default) or "rdp"
    noise_multiplier  σ used per release
    sample_rate       q per step (1.0 for cross-silo rounds where every peer takes part)
    steps_per_round   accountant steps per release (1 for one noised update per round)

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

_KEYS = {
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
    epsilon_budget: float
    delta: float
    accountant: AccountantKind = DEFAULT_ACCOUNTANT
    noise_multiplier: float | None = None
    sample_rate: float = 1.0
    steps_per_round: int = 1

    @classmethod
    def from_table(cls, table: dict[str, Any], base: Path) -> PrivacyConfig:
        """Check a parsed ``[privacy]`` table; relative ledger paths resolve against ``base``."""
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) in [privacy]: {', '.join(unknown)}")
        for key in ("ledger", "epsilon_budget", "delta"):
            if key not in table:
                raise ConfigError(f"[privacy] is missing the required key {key!r}")
        ledger = table["ledger"]
        if not isinstance(ledger, str) or not ledger:
            raise ConfigError(f"[privacy] ledger must be a non-empty path string, got {ledger!r}")
        accountant = table.get("accountant", DEFAULT_ACCOUNTANT)
        if accountant not in ACCOUNTANT_KINDS:
            raise ConfigError(
                f"[privacy] accountant must be one of {', '.join(ACCOUNTANT_KINDS)}, "
                f"got {accountant!r}"
            )
        sigma = table.get("noise_multiplier")
        return cls(
            ledger=base / ledger,
            epsilon_budget=validate.epsilon(table["epsilon_budget"]),
            delta=validate.delta(table["delta"]),
            accountant=accountant,
            noise_multiplier=None if sigma is None else validate.noise_multiplier(sigma),
            sample_rate=validate.sample_rate(table.get("sample_rate", 1.0)),
            steps_per_round=validate.count("steps_per_round", table.get("steps_per_round", 1)),
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

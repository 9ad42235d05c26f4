"""``--set`` overrides of a scenario: values in TOML scalar syntax, dotted paths to nested keys."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from p2pfed.errors import ConfigError
from sim.paths import FILE_KEYS, resolve_path, table_key
from sim.scenario import Scalar, Scenario, scenario_from_dict


def parse_value(text: str) -> Scalar:
    """A ``--set`` value: TOML scalar syntax (``0.1``, ``true``, ``64``), else a bare string."""
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(parsed, int | float | str | bool):
        return parsed
    return text


def with_overrides(scenario: Scenario, overrides: Mapping[str, Scalar]) -> Scenario:
    """A copy of ``scenario`` with dotted-path overrides applied and re-validated.

    ``table=v`` sets ``table.name`` (``topology=x.graphml`` sets ``topology.file`` instead and
    a generator name clears it); ``table.params.key=v`` reaches a parameter table; file
    values are resolved against the current folder.
    """
    raw = scenario.to_dict()
    for path, value in overrides.items():
        parts = path.split(".")
        if len(parts) == 1 and isinstance(raw.get(parts[0]), dict):
            parts.append(table_key(parts[0], raw[parts[0]], value))
        if len(parts) > 3 or parts[0] not in raw:
            raise ConfigError(f"--set path {path!r} names no scenario key")
        if len(parts) == 1:
            raw[parts[0]] = value
            continue
        table = raw[parts[0]]
        if not isinstance(table, dict) or parts[1] not in table:
            raise ConfigError(f"--set path {path!r} names no scenario key")
        if len(parts) == 3:
            if not isinstance(table[parts[1]], dict):
                raise ConfigError(f"--set path {path!r}: [{parts[0]}] {parts[1]} is no table")
            table[parts[1]] = {**table[parts[1]], parts[2]: value}
        elif (parts[0], parts[1]) in FILE_KEYS and isinstance(value, str):
            table[parts[1]] = resolve_path(value, Path.cwd())
        else:
            table[parts[1]] = value
    return scenario_from_dict(raw)

"""The study protocol at start-up: verified against the roster, then applied to the config.

Theory of operation: with ``[study] protocol`` set, ``load_study`` reads the protocol and
refuses it unless the roster's threshold of the roster's admins signed it. The protocol is
the source of the data's shape: ``apply_study`` makes its feature names (in its order; the
data is read by column name, so a file with its columns in another order works), types,
label column and classes, and centre and scale the node's ``[data]`` and ``[schema]``. What
the config also fixes must equal the protocol (must match, never silently overridden, so an
operator never runs settings they did not see): ``[model]``, ``[training]``, ``[rounds]
rounds`` and ``compression``, ``[privacy] mode``, ``epsilon_budget`` and ``delta``, and any
of the data keys the config sets. ``check_matches`` names every differing key, one sentence each.
A ``[model] torchscript`` file is pinned by its SHA-256: another file is refused by digest.
"""

from __future__ import annotations

import dataclasses

from p2pfed.config import Config
from p2pfed.errors import ConfigError
from p2pfed.identity import Roster, StudyProtocol, check_protocol
from p2pfed.training.options import TORCHSCRIPT_PREFIX, torchscript_reference


def load_study(config: Config, roster: Roster) -> StudyProtocol | None:
    """The verified study protocol of ``[study] protocol`` (None when unset)."""
    if not config.study.protocol:
        return None
    protocol = StudyProtocol.load(config.path(config.study.protocol))
    check_protocol(protocol, roster)
    check_matches(protocol, config)
    return protocol


def _pairs(protocol: StudyProtocol, config: Config) -> list[tuple[str, object, str, object]]:
    """(config key, its value, protocol field, its value) for every value both fix."""
    t, p = config.training, config.privacy
    model_key = "[model] factory" if config.model.factory else "[model] kind"
    # A TorchScript file is compared by its digest alone, in check_torchscript.
    model = [] if config.model.torchscript else [(model_key, config.model.reference())]
    pairs: list[tuple[str, object, str, object]] = [
        *((key, mine, "model kind", protocol.model) for key, mine in model),
        ("[model] hidden", config.model.hidden, "model hidden", protocol.hidden),
        ("[model] seed", config.model.seed, "model seed", protocol.seed),
        ("[training] local_epochs", t.local_epochs, "training local_epochs", protocol.local_epochs),
        ("[training] batch_size", t.batch_size, "training batch_size", protocol.batch_size),
        ("[training] learning_rate", t.learning_rate, "learning_rate", protocol.learning_rate),
        ("[training] optimizer", t.optimizer, "training optimizer", protocol.optimizer),
        ("[rounds] rounds", config.rounds.rounds, "rounds", protocol.rounds),
        ("[rounds] compression", config.rounds.compression, "compression", protocol.compression),
        ("[privacy] mode", p.mode, "privacy mode", protocol.privacy_mode),
        ("[privacy] epsilon_budget", p.epsilon_budget, "privacy epsilon", protocol.epsilon),
        ("[privacy] delta", p.delta, "privacy delta", protocol.delta),
        ("[data] label_column", config.data.label_column, "label column", protocol.label_column),
        ("[schema] labels", config.schema.labels, "label classes", protocol.classes),
    ]
    names = tuple(f.name for f in protocol.features)
    # Data keys left empty are filled from the protocol; set, they must agree.
    optional = [
        ("[data] feature_columns", config.data.feature_columns, "features", names),
        ("[schema] features", config.schema.features, "features", names),
        ("[schema] types", config.schema.types, "feature types", _types(protocol)),
        ("[schema] center", config.schema.center, "feature centers", _centers(protocol)),
        ("[schema] scale", config.schema.scale, "feature scales", _scales(protocol)),
    ]
    return pairs + [pair for pair in optional if pair[1]]


def model_reference(config: Config) -> str:
    """The model as a study protocol names it: kind, factory call, or TorchScript digest."""
    if config.model.torchscript:
        return torchscript_reference(config.path(config.model.torchscript))
    return config.model.reference()


def check_torchscript(protocol: StudyProtocol, config: Config) -> None:
    """``ConfigError`` unless ``[model] torchscript`` is the very file the protocol pins."""
    if not config.model.torchscript:
        return
    mine = torchscript_reference(config.path(config.model.torchscript))
    if mine != protocol.model:
        raise ConfigError(
            f"[model] torchscript {config.model.torchscript} has SHA-256 "
            f"{mine.removeprefix(TORCHSCRIPT_PREFIX)}, but the study protocol {protocol.short} "
            f"pins model {protocol.model!r}: every member must run the agreed file"
        )


def check_matches(protocol: StudyProtocol, config: Config) -> None:
    """``ConfigError`` naming every config key that differs from the protocol."""
    check_torchscript(protocol, config)
    mismatches = [
        f"config key {key} = {mine!r} differs from the study protocol's {field} {theirs!r}"
        for key, mine, field, theirs in _pairs(protocol, config)
        if mine != theirs
    ]
    if mismatches:
        raise ConfigError(
            "; ".join(mismatches) + f" (protocol {protocol.short}: change the config to match)"
        )


def _types(protocol: StudyProtocol) -> tuple[str, ...]:
    return tuple(f.kind for f in protocol.features)


def _centers(protocol: StudyProtocol) -> tuple[float, ...]:
    return tuple(f.center for f in protocol.features)


def _scales(protocol: StudyProtocol) -> tuple[float, ...]:
    return tuple(f.scale for f in protocol.features)


def apply_study(config: Config, protocol: StudyProtocol) -> Config:
    """``config`` with the protocol's features, label and normalisation as its data keys."""
    names = tuple(f.name for f in protocol.features)
    if config.data.builtin or config.data.loader:
        key = "builtin" if config.data.builtin else "loader"
        raise ConfigError(
            f"[data] {key} cannot follow a study protocol (its features are named table "
            "columns); set [data] path to the node's file"
        )
    data = dataclasses.replace(
        config.data, feature_columns=names, label_column=protocol.label_column
    )
    schema = dataclasses.replace(
        config.schema,
        features=names,
        labels=protocol.classes,
        types=_types(protocol),
        center=_centers(protocol),
        scale=_scales(protocol),
    )
    return dataclasses.replace(config, data=data, schema=schema)

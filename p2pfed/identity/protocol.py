"""The study protocol: what a consortium agreed to train, signed m-of-n by its admins.

Theory of operation: a study protocol is a JSON document ``{"body": {...}, "signatures":
[...]}`` like the roster. Its body fixes the consortium, the features (name, type, and the
agreed centre and scale that standardise it) in order, the label column and its classes,
the model (architecture, seed) and its training hyper-parameters, the rounds, and the
privacy mode and budget (ε, δ). Its hash is the SHA-256 of the canonical body
(``p2pfed.canonical``); admins sign ``SIGNING_DOMAIN + canonical(body)`` with the roster's
machinery (``signed.Signed``, ``roster_trust.check_signed``), and a daemon
accepts a protocol only if the roster's threshold of the roster's admins signed it.

Every field is checked where it is parsed, with one sentence naming the field; sizes are
capped (``MAX_PROTOCOL_BYTES``, ``MAX_FEATURES``...) so a hostile file cannot exhaust memory.
Errors: ``RosterError`` (a ``ConfigError``) with a ``RosterProblem``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from p2pfed.identity.keys import Signer
from p2pfed.identity.roster import Roster
from p2pfed.identity.roster_fields import (
    RosterError,
    RosterProblem,
    RosterSignature,
    check_name,
    json_int,
    json_object,
    json_text,
    malformed,
)
from p2pfed.identity.roster_trust import check_signed
from p2pfed.identity.signed import Signed, parse_signed, read_signed

PROTOCOL_FORMAT = "p2pfed-study/1"
SIGNING_DOMAIN = b"p2pfed study protocol signature v1\x00"
MAX_PROTOCOL_BYTES = 1 << 20
MAX_FEATURES = 4096
MAX_CLASSES = 1024
MAX_LAYERS = 16
MAX_NAME = 128
FEATURE_TYPES = ("float", "int", "binary")
"""As ``p2pfed.training.validation`` checks them (identity sits below training)."""
PRIVACY_MODES = ("distributed", "local", "dp-sgd", "off")
"""As ``[privacy] mode`` accepts them (identity sits below config)."""
COMPRESSIONS = ("none", "q8", "q4")
"""As ``[rounds] compression`` accepts them; "none" is left out of the body (older hashes)."""
BODY_KEYS = {
    "format",
    "consortium_id",
    "features",
    "label",
    "model",
    "training",
    "rounds",
    "privacy",
}


def _text(value: object, what: str) -> str:
    text = json_text(value, what)
    if not 1 <= len(text) <= MAX_NAME or not text.isprintable():
        raise malformed(f"{what} must be 1-{MAX_NAME} printable characters")
    return text


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise malformed(f"{what} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise malformed(f"{what} must be finite, not {value!r}")
    return float(value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise malformed(message)


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column: its name, type, and the agreed centre and scale."""

    name: str
    kind: str = "float"
    center: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        _text(self.name, "a feature name")
        where = f"feature {self.name!r}"
        _check(self.kind in FEATURE_TYPES, f"{where}: type must be one of {FEATURE_TYPES}")
        _number(self.center, f"{where}: center")
        _check(_number(self.scale, f"{where}: scale") > 0, f"{where}: scale must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The feature's JSON object."""
        return {
            "name": self.name,
            "type": self.kind,
            "center": float(self.center),
            "scale": float(self.scale),
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> Feature:
        """Parse a feature's JSON object; ``where`` locates it in error messages."""
        f = json_object(data, where, {"name", "type", "center", "scale"})
        return cls(
            _text(f["name"], f"{where}: name"),
            json_text(f["type"], f"{where}: type"),
            _number(f["center"], f"{where}: center"),
            _number(f["scale"], f"{where}: scale"),
        )


@dataclass(frozen=True, slots=True)
class StudyProtocol(Signed):
    """A consortium's agreed study: data, model, rounds and privacy, with admin signatures."""

    DOMAIN: ClassVar[bytes] = SIGNING_DOMAIN

    consortium_id: str
    features: tuple[Feature, ...]
    label_column: str
    classes: tuple[int, ...]
    model: str = "logistic"
    hidden: tuple[int, ...] = ()
    seed: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    rounds: int = 20
    privacy_mode: str = "distributed"
    epsilon: float = 10.0
    delta: float = 1e-5
    compression: str = "none"
    signatures: tuple[RosterSignature, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.consortium_id, "study protocol consortium id")
        _check(1 <= len(self.features) <= MAX_FEATURES, f"features: 1-{MAX_FEATURES} needed")
        names = [f.name for f in self.features]
        _check(len(set(names)) == len(names), "features: a feature name is listed twice")
        _text(self.label_column, "label column")
        _check(self.label_column not in names, "label column is also listed as a feature")
        _check(
            2 <= len(self.classes) <= MAX_CLASSES and len(set(self.classes)) == len(self.classes),
            f"label classes must be 2-{MAX_CLASSES} distinct integers",
        )
        _check(all(c >= 0 for c in self.classes), "label classes must be non-negative")
        _text(self.model, "model kind")
        _check(len(self.hidden) <= MAX_LAYERS, f"model hidden: at most {MAX_LAYERS} layers")
        _check(all(1 <= h <= 1 << 16 for h in self.hidden), "model hidden widths must be 1-65536")
        _check(0 <= self.seed < 1 << 53, "model seed must be in 0..2^53")
        _check(1 <= self.local_epochs <= 10_000, "training local_epochs must be 1-10000")
        _check(1 <= self.batch_size <= 1 << 20, "training batch_size must be 1-1048576")
        _check(self.learning_rate > 0, "training learning_rate must be positive")
        _text(self.optimizer, "training optimizer")
        _check(1 <= self.rounds <= 1_000_000, "rounds must be 1-1000000")
        _check(self.privacy_mode in PRIVACY_MODES, f"privacy mode must be one of {PRIVACY_MODES}")
        _check(self.epsilon > 0, "privacy epsilon must be positive")
        _check(0 < self.delta < 1, "privacy delta must be in (0, 1)")
        _check(self.compression in COMPRESSIONS, f"compression must be one of {COMPRESSIONS}")

    # --- serialisation --------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """The signed part, as a JSON-ready dict."""
        extra = {} if self.compression == "none" else {"compression": self.compression}
        return extra | {
            "format": PROTOCOL_FORMAT,
            "consortium_id": self.consortium_id,
            "features": [f.to_dict() for f in self.features],
            "label": {"column": self.label_column, "classes": list(self.classes)},
            "model": {"kind": self.model, "hidden": list(self.hidden), "seed": self.seed},
            "training": {
                "local_epochs": self.local_epochs,
                "batch_size": self.batch_size,
                "learning_rate": float(self.learning_rate),
                "optimizer": self.optimizer,
            },
            "rounds": self.rounds,
            "privacy": {
                "mode": self.privacy_mode,
                "epsilon": float(self.epsilon),
                "delta": float(self.delta),
            },
        }

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "study protocol") -> StudyProtocol:
        """Parse a protocol document; ``RosterError(MALFORMED)`` names the first problem."""
        body, signatures = parse_signed(
            text, MAX_PROTOCOL_BYTES, source, BODY_KEYS, PROTOCOL_FORMAT, frozenset({"compression"})
        )
        features = body["features"]
        _check(isinstance(features, list), f"{source}: features must be a list")
        _check(len(features) <= MAX_FEATURES, f"{source}: more than {MAX_FEATURES} features")
        return cls(
            consortium_id=check_name(body["consortium_id"], f"{source}: consortium_id"),
            features=tuple(
                Feature.from_dict(f, f"{source} feature {i + 1}") for i, f in enumerate(features)
            ),
            signatures=signatures,
            **_label(body["label"], source),
            **_model(body["model"], source),
            **_training(body["training"], source),
            rounds=json_int(body["rounds"], f"{source}: rounds"),
            **_privacy(body["privacy"], source),
            compression=_text(body.get("compression", "none"), f"{source}: compression"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StudyProtocol:
        """Read and parse a protocol file (no signature check: see ``check_protocol``)."""
        path = Path(path)
        data = read_signed(path, MAX_PROTOCOL_BYTES, "study protocol file")
        return cls.from_json(data, f"study protocol file {path}")

    # --- signatures -----------------------------------------------------------------------

    def signed_by(self, identity: Signer) -> StudyProtocol:
        """This document with ``identity``'s signature appended (once per key)."""
        return self.sign(identity, f"study protocol {self.short}")

    @property
    def short(self) -> str:
        """``sha256:`` and the first 16 hex digits of the hash, for sentences."""
        return f"sha256:{self.digest()[:16]}"


def check_protocol(protocol: StudyProtocol, roster: Roster) -> None:
    """Raise ``RosterError`` unless ``roster``'s threshold of its admins signed ``protocol``."""
    if protocol.consortium_id != roster.consortium_id:
        raise RosterError(
            RosterProblem.WRONG_CONSORTIUM,
            f"the study protocol is for consortium {protocol.consortium_id!r}, but the roster "
            f"is {roster.consortium_id!r}",
        )
    check_signed(
        protocol,
        roster.admins,
        roster.threshold,
        "the roster's",
        f"study protocol {protocol.short}",
    )


def _int_list(value: object, what: str, limit: int) -> tuple[int, ...]:
    _check(isinstance(value, list) and len(value) <= limit, f"{what} must be a list")
    assert isinstance(value, list)
    return tuple(json_int(v, f"{what} entry") for v in value)


def _label(value: object, source: str) -> dict[str, Any]:
    f = json_object(value, f"{source} label", {"column", "classes"})
    return {
        "label_column": _text(f["column"], f"{source}: label column"),
        "classes": _int_list(f["classes"], f"{source}: label classes", MAX_CLASSES),
    }


def _model(value: object, source: str) -> dict[str, Any]:
    f = json_object(value, f"{source} model", {"kind", "hidden", "seed"})
    return {
        "model": _text(f["kind"], f"{source}: model kind"),
        "hidden": _int_list(f["hidden"], f"{source}: model hidden", MAX_LAYERS),
        "seed": json_int(f["seed"], f"{source}: model seed"),
    }


def _training(value: object, source: str) -> dict[str, Any]:
    keys = {"local_epochs", "batch_size", "learning_rate", "optimizer"}
    f = json_object(value, f"{source} training", keys)
    return {
        "local_epochs": json_int(f["local_epochs"], f"{source}: training local_epochs"),
        "batch_size": json_int(f["batch_size"], f"{source}: training batch_size"),
        "learning_rate": _number(f["learning_rate"], f"{source}: training learning_rate"),
        "optimizer": _text(f["optimizer"], f"{source}: training optimizer"),
    }


def _privacy(value: object, source: str) -> dict[str, Any]:
    f = json_object(value, f"{source} privacy", {"mode", "epsilon", "delta"})
    return {
        "privacy_mode": _text(f["mode"], f"{source}: privacy mode"),
        "epsilon": _number(f["epsilon"], f"{source}: privacy epsilon"),
        "delta": _number(f["delta"], f"{source}: privacy delta"),
    }

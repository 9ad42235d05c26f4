"""TOML documents parsed into frozen dataclasses, with one clear error per bad key.

Theory of operation: the accepted keys *are* the dataclass fields. ``parse(cls, doc, what)``
walks the fields of ``cls``: a field whose type is itself a dataclass is a TOML table,
parsed recursively; scalars are checked against their type hints (ints accepted where
floats are expected, never bools as numbers); ``tuple[T, ...]`` takes a TOML array and
``tuple[tuple[str, S], ...]`` a table of scalar parameters (sorted pairs); ``T | None``
accepts absence. An unknown key, a wrong type, or a value a dataclass's ``validate()``
refuses ends in one ``ConfigError`` naming the document (``what``: the daemon's ``config``,
the simulator's ``scenario``) and the key, e.g.
``config key [privacy] delta must be in (0, 1), not 2.0``. ``validate()`` methods raise
through ``check``; bounds both documents share (``positive``, ``open_unit``) are written once
here. ``comma_list`` is the one reader of comma-separated command-line values (``--sizes
1,16,64``): a bad item is named in one sentence, after the flag argparse puts before it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from p2pfed.errors import ConfigError

T = TypeVar("T")


class SettingError(ConfigError):
    """A key's value is invalid; carries the dotted key for programs."""

    def __init__(self, what: str, where: str, why: str) -> None:
        super().__init__(f"{what} key {where} {why}")
        self.where = where


def check(ok: bool, where: str, why: str, what: str = "config") -> None:
    """Raise ``SettingError`` for ``where`` (``[table] key``) unless ``ok``."""
    if not ok:
        raise SettingError(what, where, why)


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def _coerce(value: object, hint: Any, where: str, what: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where, what)
    if hint is bool:
        check(isinstance(value, bool), where, f"must be true or false, not {value!r}", what)
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        check(ok, where, f"must be an integer, not {value!r}", what)
        return value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        check(ok, where, f"must be a number, not {value!r}", what)
        result = float(value)  # type: ignore[arg-type]
        check(math.isfinite(result), where, f"must be finite, not {value!r}", what)
        return result
    if hint is str:
        check(isinstance(value, str), where, f"must be a string, not {value!r}", what)
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if typing.get_origin(args[0]) is tuple:
            return _parameters(value, where, what)
        check(isinstance(value, list), where, f"must be a list, not {value!r}", what)
        assert isinstance(value, list)
        return tuple(_coerce(v, args[0], f"{where}[{i}]", what) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _table(hint, value, where, what)
    raise TypeError(f"settings field type {hint!r} is not supported")  # a bug in our dataclass


def _parameters(value: object, where: str, what: str) -> tuple[tuple[str, object], ...]:
    """A table of scalar parameters as sorted (name, value) pairs (hashable, canonical)."""
    ok = isinstance(value, Mapping)
    check(ok, where, f"must be a table of parameters, not {value!r}", what)
    assert isinstance(value, Mapping)
    pairs: list[tuple[str, object]] = []
    for key, item in sorted(value.items()):
        scalar = isinstance(item, int | float | str | bool)
        check(scalar, f"{where}.{key}", "must be a number, string or boolean", what)
        pairs.append((str(key), item))
    return tuple(pairs)


def positive(value: float, where: str, what: str = "config") -> None:
    """``SettingError`` unless ``value`` > 0 (a norm, a noise multiplier, a range)."""
    check(value > 0, where, "must be positive", what)


def open_unit(value: float, where: str, what: str = "config") -> None:
    """``SettingError`` unless 0 < ``value`` < 1 (a probability such as δ or a fraction)."""
    check(0 < value < 1, where, f"must be in (0, 1), not {value}", what)


def _table(cls: type[T], table: object, section: str, what: str) -> T:
    check(isinstance(table, Mapping), section or "document", "must be a table", what)
    assert isinstance(table, Mapping)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    for key, value in table.items():
        where = _where(section, key)
        if key not in names:
            raise SettingError(
                what, where, f"is not a known setting; expected one of {', '.join(names)}"
            )
        hint = hints[key]
        sub = f"{section}.{key}" if section else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _table(hint, value, sub, what)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, hint, where, what)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise SettingError(what, _where(section, missing[0]), "is required") from None
        raise ConfigError(f"{what} table [{section}] is invalid ({exc})") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def parse(cls: type[T], document: Mapping[str, object], what: str = "config") -> T:
    """Build ``cls`` from a parsed TOML document; ``ConfigError`` names any bad key."""
    return _table(cls, document, "", what)


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Parse a TOML file; ``ConfigError`` if it is missing or not TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} file {path} is not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path} cannot be read ({exc.strerror})") from None


def comma_list(
    kind: Callable[[str], T], expected: str, ok: Callable[[T], bool] = lambda _: True
) -> Callable[[str], list[T]]:
    """An argparse ``type=``: comma-separated items, each read by ``kind`` and kept if ``ok``.

    An item ``kind`` cannot read (``ValueError``, ``ArithmeticError``) or ``ok`` refuses, an
    empty item included, raises ``ArgumentTypeError`` naming it and what was ``expected``
    (argparse names the flag), e.g. ``argument --sizes: item 'x' is not a whole number``.
    """

    def parse(text: str) -> list[T]:
        items = []
        for part in (p.strip() for p in text.split(",")):
            try:
                value = kind(part)
                good = ok(value)
            except (ValueError, ArithmeticError):
                good = False
            if not good:
                raise argparse.ArgumentTypeError(f"item {part!r} of {text!r} is not {expected}")
            items.append(value)
        return items

    return parse

"""PEP 562 loading of a package's public names on first use.

A package lists which of its modules holds each name; importing the package then costs
nothing, and ``from package import Name`` imports only that module (and what it needs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, modules: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], Any]]:
    """The package's ``__all__`` and its module ``__getattr__`` for ``modules`` (module → names)."""
    where = {name: module for module, names in modules.items() for name in names}

    def load(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return sorted(where), load

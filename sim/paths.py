"""File-valued scenario keys: which they are and how relative paths are resolved.

Theory of operation: a scenario names files (a graph, a partition, a ``file.py:function``
loader or model factory). Paths written in a scenario file are relative to that file's folder;
paths given with ``--set`` are relative to the current folder. Both are made absolute when the
scenario is built, so a point runs the same from any folder (or on a Ray worker sharing the
file system) and its digest names the file it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Keys naming files, resolved against the scenario file's folder (``--set``: the current one).
FILE_KEYS = (("topology", "file"), ("partition", "file"), ("data", "loader"), ("model", "factory"))
#: Suffixes that make ``--set topology=VALUE`` mean a graph file rather than a generator.
GRAPH_SUFFIXES = (".graphml", ".xml", ".gml", ".json", ".edges", ".edgelist", ".txt", ".csv")


def resolve_path(text: str, base: Path) -> str:
    """A file key's value with its path made absolute against ``base`` (callables: the file)."""
    if not text:
        return text
    head, sep, function = text.rpartition(":")
    if sep and function.isidentifier():
        if not head.endswith(".py"):
            return text  # an importable module name, not a path
        return f"{(base / head).resolve()}:{function}"
    return str((base / text).resolve())


def resolve_files(raw: dict[str, Any], base: Path) -> None:
    """Resolve a scenario document's file keys in place against ``base``."""
    for table, key in FILE_KEYS:
        section = raw.get(table)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            section[key] = resolve_path(section[key], base)


def table_key(name: str, table: dict[str, Any], value: object) -> str:
    """The key ``--set TABLE=value`` sets: ``name``, or ``file`` for a topology file."""
    if name != "topology":
        return "name"
    if isinstance(value, str) and value.lower().endswith(GRAPH_SUFFIXES):
        return "file"
    table["file"] = ""  # a generator name replaces a graph file
    return "name"

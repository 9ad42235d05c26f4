"""docs/architecture.md draws the package import graph the code has, and the layers hold.

The graph is computed with grimp (import-linter's library, which also reads imports inside
functions): one node per direct child of ``p2pfed`` (``p2pfed.__main__`` and the root
``__init__``, which only holds ``__version__``, left out), plus ``sim`` and ``topologies``;
an edge A --> B when any module of A imports any module of B. Edges into ``errors`` are not
drawn (every package may raise our errors) and not compared.

``python tests/test_architecture.py`` prints the edges as they are now, for the diagram.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
ROOTS = ("p2pfed", "sim", "topologies")
EDGE = re.compile(r"^\s*([a-z_]+) --> ([a-z_]+)\s*$")


def node(module: str) -> str | None:
    """The diagram node of ``module``, or None for modules the diagram leaves out."""
    parts = module.split(".")
    if parts[0] != "p2pfed":
        return parts[0]
    if len(parts) == 1 or parts[1] == "__main__":
        return None
    return parts[1]


def code_edges(graph: grimp.ImportGraph) -> set[tuple[str, str]]:
    edges = set()
    for module in graph.modules:
        a = node(module)
        if a is None or module.split(".")[0] not in ROOTS:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            b = node(imported)
            if b is not None and b != a and b != "errors":
                edges.add((a, b))
    return edges


def doc_edges(text: str) -> set[tuple[str, str]]:
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block is not None, f"{DOC} has no ```mermaid block with the import graph"
    edges = set()
    for line in block.group(1).splitlines():
        match = EDGE.match(line)
        if match:
            edges.add((match.group(1), match.group(2)))
    return edges


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOTS, cache_dir=None)


def test_the_documented_graph_is_the_code_graph(graph: grimp.ImportGraph) -> None:
    drawn, real = doc_edges(DOC.read_text()), code_edges(graph)
    missing = sorted(f"{a} --> {b}" for a, b in real - drawn)
    stale = sorted(f"{a} --> {b}" for a, b in drawn - real)
    assert not missing and not stale, (
        f"docs/architecture.md's diagram is out of date: add {missing or 'nothing'}, "
        f"remove {stale or 'nothing'}"
    )


def layers_contract() -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return dict(contract)


def illegal(graph: grimp.ImportGraph) -> set[grimp.PackageDependency]:
    """What the pyproject layers contract finds in ``graph`` (its ignored imports removed)."""
    contract = layers_contract()
    for rule in contract.get("ignore_imports", []):
        importer, imported = (part.strip() for part in rule.split("->"))
        graph.remove_import(importer=importer, imported=imported)
    layers = [grimp.Layer(*(m.strip() for m in layer.split("|"))) for layer in contract["layers"]]
    found: set[grimp.PackageDependency] = graph.find_illegal_dependencies_for_layers(layers=layers)
    return found


def test_the_code_keeps_the_declared_layers(graph: grimp.ImportGraph) -> None:
    assert illegal(copy.deepcopy(graph)) == set()


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("p2pfed.wire.frames", "p2pfed.node.peer"),  # a protocol core reaching the node
        ("p2pfed.node.peer", "p2pfed.daemon"),  # the node reaching its composition
        ("p2pfed.daemon", "p2pfed.testing.process"),  # the peer importing a test harness
        ("p2pfed.demo", "p2pfed.bench.wire"),  # the demo reaching a benchmark
        ("p2pfed.studies", "p2pfed.demo"),  # two independent siblings
        ("sim.engine", "p2pfed.cli"),  # the simulator reaching the command line
    ],
)
def test_an_upward_import_breaks_the_layers(
    graph: grimp.ImportGraph, importer: str, imported: str
) -> None:
    attacked = copy.deepcopy(graph)
    attacked.add_import(importer=importer, imported=imported)
    assert illegal(attacked), f"the layers contract let {importer} -> {imported} through"


def main() -> None:
    """Print the code's edges, in mermaid syntax, grouped by importer."""
    for a, b in sorted(code_edges(grimp.build_graph(*ROOTS, cache_dir=None))):
        print(f"  {a} --> {b}")


if __name__ == "__main__":
    main()

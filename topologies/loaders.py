"""Reading topologies from files: edge lists, GraphML and JSON.

Theory of operation: each format is parsed into the same neutral form — declared node ids,
edges ``(source, target, weight or None)`` and a directed flag — and one function turns that
into a validated ``Topology``. So every format gets the same checks and the same one-sentence
errors: unknown node ids, self-loops, negative weights, asymmetric weights where symmetry is
required, a disconnected graph, weights on some edges but not others. Node ids are kept as
``Topology.labels`` (node ``i`` is ``labels[i]``, in order of first appearance).

Formats:
- edge list: one ``source target [weight]`` per line, ``#`` comments; undirected.
- GraphML: ``<graph edgedefault=...>`` with ``<node id>``, ``<edge source target>`` and an
  optional edge ``<data>`` whose key is declared with ``attr.name="weight"``.
- JSON: ``{"directed": false, "nodes": [...], "edges": [[u, v], [u, v, w] or
  {"source": u, "target": v, "weight": w}, ...]}``; networkx's node-link form (nodes as
  ``{"id": ...}`` objects, edges under ``"links"`` or ``"edges"``, ``"multigraph"``,
  ``"graph"``) is read too.
- GML: parsed by networkx (``label`` ignored, node ``id`` kept), an edge ``weight`` used.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from topologies.errors import TopologyError
from topologies.graphs import Topology, from_graphs

RawEdge = tuple[str, str, float | None]

_MAX_FILE_BYTES = 64 * 1024 * 1024


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise TopologyError(f"{path}: file is {size} bytes, over the 64 MiB limit")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise TopologyError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot be read ({exc.strerror})") from None


def _weight(text: Any, where: str) -> float:
    try:
        w = float(text)
    except (TypeError, ValueError):
        raise TopologyError(f"{where}: weight {text!r} is not a number") from None
    if not math.isfinite(w):
        raise TopologyError(f"{where}: weight {text!r} is not finite")
    if w < 0:
        raise TopologyError(f"{where}: negative weight {w}")
    return w


def assemble(
    source: str,
    nodes: Sequence[str] | None,
    edges: Iterable[RawEdge],
    directed: bool,
    symmetric: bool | None = None,
    mixing: str = "auto",
) -> Topology:
    """Validate parsed nodes and edges and build the ``Topology``.

    ``nodes`` lists the allowed ids (``None``: whatever the edges name). ``symmetric``
    requires every weighted directed edge to have an equal-weight reverse; it defaults to
    True for undirected graphs, where a pair listed twice must agree.
    """
    symmetric = (not directed) if symmetric is None else symmetric
    order: dict[str, int] = {}
    declared = set(nodes) if nodes is not None else None
    for node in nodes or ():
        order.setdefault(node, len(order))
    weights: dict[tuple[str, str], float | None] = {}
    for a, b, w in edges:
        for end in (a, b):
            if declared is not None and end not in declared:
                raise TopologyError(f"{source}: edge ({a}, {b}) names unknown node {end!r}")
            order.setdefault(end, len(order))
        if a == b:
            raise TopologyError(f"{source}: self-loop on node {a!r}")
        key = (a, b) if directed or a <= b else (b, a)
        if key in weights and weights[key] != w:
            raise TopologyError(
                f"{source}: edge ({a}, {b}) is listed twice with weights {weights[key]} and {w}"
            )
        weights[key] = w
    if not order:
        raise TopologyError(f"{source}: the graph has no nodes")
    if directed and symmetric:
        for (a, b), w in weights.items():
            if (b, a) not in weights:
                raise TopologyError(f"{source}: edge ({a}, {b}) has no reverse edge")
            if weights[(b, a)] != w:
                raise TopologyError(
                    f"{source}: asymmetric weights on ({a}, {b}): {w} vs {weights[(b, a)]}"
                )
    labels = tuple(order)
    graph: nx.Graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(len(labels)))
    for (a, b), w in weights.items():
        attrs = {} if w is None else {"weight": w}
        graph.add_edge(order[a], order[b], **attrs)
    try:
        return from_graphs(Path(source).stem, [graph], {"file": source}, mixing, labels)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def load_edgelist(
    path: str | Path, nodes: Sequence[str] | None = None, mixing: str = "auto"
) -> Topology:
    """Read an undirected ``source target [weight]`` edge list."""
    path = Path(path)
    edges: list[RawEdge] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) not in (2, 3):
            raise TopologyError(f"{where}: expected 'source target [weight]', got {line.strip()!r}")
        w = _weight(fields[2], where) if len(fields) == 3 else None
        edges.append((fields[0], fields[1], w))
    return assemble(str(path), nodes, edges, directed=False, mixing=mixing)


def load_json(path: str | Path, symmetric: bool | None = None, mixing: str = "auto") -> Topology:
    """Read ``{"directed", "nodes", "edges"}`` JSON."""
    path = Path(path)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise TopologyError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise TopologyError(f"{path}: expected an object with an 'edges' (or 'links') list")
    if "links" in doc and "edges" not in doc:
        doc = {**doc, "edges": doc["links"]}
        del doc["links"]
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list):
        raise TopologyError(f"{path}: expected an object with an 'edges' (or 'links') list")
    unknown = sorted(set(doc) - {"directed", "nodes", "edges", "name", "multigraph", "graph"})
    if unknown:
        raise TopologyError(f"{path}: unknown key {unknown[0]!r}")
    if doc.get("multigraph", False) is not False:
        raise TopologyError(f"{path}: multigraphs are not supported (parallel edges)")
    directed = doc.get("directed", False)
    if not isinstance(directed, bool):
        raise TopologyError(f"{path}: 'directed' must be true or false")
    raw_nodes = doc.get("nodes")
    if raw_nodes is not None and not isinstance(raw_nodes, list):
        raise TopologyError(f"{path}: 'nodes' must be a list")
    nodes = None if raw_nodes is None else [_node_id(x, path) for x in raw_nodes]
    edges: list[RawEdge] = []
    for i, item in enumerate(doc["edges"]):
        where = f"{path}: edge #{i}"
        if isinstance(item, dict):
            if "source" not in item or "target" not in item:
                raise TopologyError(f"{where} needs 'source' and 'target'")
            a, b, w = item["source"], item["target"], item.get("weight")
        elif isinstance(item, list) and len(item) in (2, 3):
            a, b, w = item[0], item[1], (item[2] if len(item) == 3 else None)
        else:
            raise TopologyError(f"{where} must be [source, target, weight?] or an object")
        edges.append((str(a), str(b), None if w is None else _weight(w, where)))
    return assemble(str(path), nodes, edges, directed, symmetric, mixing)


def _node_id(item: Any, path: Path) -> str:
    """A JSON node: a bare id, or a node-link ``{"id": ...}`` object."""
    if isinstance(item, dict):
        if "id" not in item:
            raise TopologyError(f"{path}: a node object has no 'id'")
        return str(item["id"])
    return str(item)


def load_gml(path: str | Path, mixing: str = "auto") -> Topology:
    """Read a GML file (one graph; an edge ``weight`` is used if present)."""
    path = Path(path)
    try:
        graph = nx.parse_gml(_read_text(path), label="id")
    except (nx.NetworkXError, ValueError) as exc:
        raise TopologyError(f"{path}: not valid GML ({exc})") from None
    if graph.is_multigraph():
        raise TopologyError(f"{path}: multigraphs are not supported (parallel edges)")
    nodes = [str(v) for v in graph.nodes]
    edges: list[RawEdge] = []
    for a, b, data in graph.edges(data=True):
        w = data.get("weight")
        edges.append(
            (str(a), str(b), None if w is None else _weight(w, f"{path}: edge ({a}, {b})"))
        )
    return assemble(str(path), nodes, edges, graph.is_directed(), mixing=mixing)


_GML = "{http://graphml.graphdrawing.org/xmlns}"


def load_graphml(path: str | Path, symmetric: bool | None = None, mixing: str = "auto") -> Topology:
    """Read a GraphML file (one graph; an edge data key named ``weight`` is used if present)."""
    path = Path(path)
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as exc:
        raise TopologyError(f"{path}: not valid GraphML ({exc})") from None

    def find_all(elem: ET.Element, tag: str) -> list[ET.Element]:
        return elem.findall(_GML + tag) + elem.findall(tag)

    graphs = find_all(root, "graph")
    if len(graphs) != 1:
        raise TopologyError(f"{path}: expected exactly one <graph>, found {len(graphs)}")
    graph = graphs[0]
    directed = graph.get("edgedefault", "directed") == "directed"
    weight_keys = {
        k.get("id")
        for k in find_all(root, "key")
        if k.get("attr.name") == "weight" and k.get("for") in (None, "edge", "all")
    }
    nodes = []
    for node in find_all(graph, "node"):
        node_id = node.get("id")
        if node_id is None:
            raise TopologyError(f"{path}: a <node> has no id")
        nodes.append(node_id)
    edges: list[RawEdge] = []
    for i, edge in enumerate(find_all(graph, "edge")):
        a, b = edge.get("source"), edge.get("target")
        if a is None or b is None:
            raise TopologyError(f"{path}: edge #{i} needs source and target")
        w = None
        for data in find_all(edge, "data"):
            if data.get("key") in weight_keys:
                w = _weight(data.text, f"{path}: edge ({a}, {b})")
        edges.append((a, b, w))
    return assemble(str(path), nodes, edges, directed, symmetric, mixing)


def load(path: str | Path, mixing: str = "auto") -> Topology:
    """Read a topology file by extension: .json, .graphml/.xml, .gml, else an edge list."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gml":
        return load_gml(path, mixing=mixing)
    if suffix == ".json":
        return load_json(path, mixing=mixing)
    if suffix in (".graphml", ".xml"):
        return load_graphml(path, mixing=mixing)
    return load_edgelist(path, mixing=mixing)

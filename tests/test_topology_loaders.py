import json
from pathlib import Path

import pytest

import topologies as T
from topologies import TopologyError

GRAPHML = """<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="w" for="edge" attr.name="weight" attr.type="double"/>
  <graph edgedefault="undirected">
    {nodes}
    {edges}
  </graph>
</graphml>
"""


def graphml(path: Path, nodes: list[str], edges: list[tuple[str, str, float | None]]) -> Path:
    n = "".join(f'<node id="{x}"/>' for x in nodes)
    e = "".join(
        f'<edge source="{a}" target="{b}">'
        + (f'<data key="w">{w}</data>' if w is not None else "")
        + "</edge>"
        for a, b, w in edges
    )
    path.write_text(GRAPHML.format(nodes=n, edges=e))
    return path


def test_edgelist_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "ring.txt"
    p.write_text("# a 4-ring of hospitals\nA B\nB C\nC D\nD A\n")
    topo = T.load(p)
    assert topo.labels == ("A", "B", "C", "D")
    assert T.analyze(topo).spectral_gap == pytest.approx(T.analyze(T.build("ring", 4)).spectral_gap)


def test_weighted_json_uses_weights(tmp_path: Path) -> None:
    p = tmp_path / "g.json"
    doc = {
        "nodes": ["a", "b", "c"],
        "edges": [["a", "b", 0.5], {"source": "b", "target": "c", "weight": 0.25}],
    }
    p.write_text(json.dumps(doc))
    w = T.load(p).mixing_at(0).toarray()
    assert w[0, 1] == 0.5 and w[1, 2] == 0.25 and w[1, 1] == 0.25


def test_graphml_weighted(tmp_path: Path) -> None:
    p = graphml(tmp_path / "g.graphml", ["x", "y", "z"], [("x", "y", 0.3), ("y", "z", 0.3)])
    topo = T.load(p)
    assert topo.n == 3 and topo.mixing_at(0).toarray()[0, 1] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("A B\nC D\n", "disconnected"),
        ("A A\nA B\n", "self-loop"),
        ("A B -0.5\n", "negative weight"),
        ("A B 0.2\nB A 0.3\n", "listed twice"),
        ("A B 0.2\nB C\n", "no 'weight'"),
        ("A B C D\n", "expected 'source target"),
        ("A B x\n", "not a number"),
        ("A B 0.9\nA C 0.9\n", "sum to 1.8, over 1"),
        ("", "no nodes"),
    ],
)
def test_edgelist_errors(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(TopologyError, match=match) as info:
        T.load(p)
    assert str(p) in str(info.value)


def test_unknown_node_ids(tmp_path: Path) -> None:
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"nodes": ["a", "b"], "edges": [["a", "b"], ["b", "zed"]]}))
    with pytest.raises(TopologyError, match="unknown node 'zed'"):
        T.load(p)
    g = graphml(tmp_path / "g.graphml", ["a", "b"], [("a", "b", None), ("b", "q", None)])
    with pytest.raises(TopologyError, match="unknown node 'q'"):
        T.load(g)
    e = tmp_path / "e.txt"
    e.write_text("a b\nb c\n")
    with pytest.raises(TopologyError, match="unknown node 'c'"):
        T.load_edgelist(e, nodes=["a", "b"])


def test_asymmetric_directed_weights_refused_when_symmetry_required(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"directed": True, "edges": [["a", "b", 0.5], ["b", "a", 0.25]]}))
    with pytest.raises(TopologyError, match="asymmetric"):
        T.load_json(p, symmetric=True)
    q = tmp_path / "d2.json"
    q.write_text(json.dumps({"directed": True, "edges": [["a", "b", 0.5]]}))
    with pytest.raises(TopologyError, match="no reverse edge"):
        T.load_json(q, symmetric=True)


def test_malformed_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "x.json"
    bad_json.write_text("{nope")
    with pytest.raises(TopologyError, match="not valid JSON"):
        T.load(bad_json)
    bad_xml = tmp_path / "x.graphml"
    bad_xml.write_text("<graphml><graph>")
    with pytest.raises(TopologyError, match="not valid GraphML"):
        T.load(bad_xml)
    with pytest.raises(TopologyError, match="no such file"):
        T.load(tmp_path / "missing.txt")
    extra = tmp_path / "y.json"
    extra.write_text(json.dumps({"edges": [], "colour": "red"}))
    with pytest.raises(TopologyError, match="unknown key 'colour'"):
        T.load(extra)


def test_gml_and_node_link_json_read_and_bad_ones_refused(tmp_path: Path) -> None:
    import networkx as nx

    graph = nx.path_graph(4)
    nx.set_edge_attributes(graph, 0.25, "weight")
    graph[1][2]["weight"] = 0.5
    nx.write_gml(graph, tmp_path / "p.gml")
    (tmp_path / "p.json").write_text(json.dumps(nx.node_link_data(graph, edges="links")))
    for name in ("p.gml", "p.json"):
        topo = T.load(tmp_path / name, mixing="weights")
        assert topo.labels == ("0", "1", "2", "3")
        assert topo.union_graph().number_of_edges() == 3
        assert topo.mixing_at(0)[1, 2] == pytest.approx(0.5)  # the file's weight is read
    doc = json.loads((tmp_path / "p.json").read_text())
    cases = {
        "multi.json": json.dumps({**doc, "multigraph": True}),
        "noid.json": json.dumps({**doc, "nodes": [{"name": "a"}]}),
        "bad.gml": "graph [ node [ id 0 ] edge [ source 0 ]",
    }
    expected = {"multi.json": "multigraphs", "noid.json": "no 'id'", "bad.gml": "not valid GML"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TopologyError, match=expected[name]):
            T.load(tmp_path / name)

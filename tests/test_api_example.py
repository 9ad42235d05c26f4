"""The custom-peer example in docs/api.md runs as shipped and stays short."""

import importlib.util
from pathlib import Path

import trio

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "custom_peer.py"


def test_example_is_under_40_lines_of_code() -> None:
    lines = [
        line
        for line in EXAMPLE.read_text().splitlines()
        if line.strip() and not line.strip().startswith(("#", '"""', "import", "from"))
    ]
    assert len(lines) < 40


def test_custom_peer_example_trains_three_rounds(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("custom_peer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reports = trio.run(module.main, str(tmp_path))
    assert len(reports) == 3
    assert all(r.committed for rs in reports for r in rs)
    assert len({rs[-1].model_digest for rs in reports}) == 1

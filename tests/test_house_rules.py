"""The house rules of docs/architecture.md, checked on the code itself.

Modules in ``p2pfed/`` stay at most 500 lines and a driver (an ``async def``: the code
that moves bytes and time) at most 60 lines of body, so protocol decisions live in the
sans-I/O cores where they can be tested without a network. McCabe complexity is ruff's
C901 (``make lint``); import layers are import-linter's contracts (``make lint``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "p2pfed"
MAX_MODULE_LINES = 500
MAX_DRIVER_LINES = 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _body_lines(node: ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if (
        len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    assert node.end_lineno is not None
    return node.end_lineno - body[0].lineno + 1


def test_every_module_is_at_most_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_driver_is_at_most_60_lines() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef) and _body_lines(node) > MAX_DRIVER_LINES:
                long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = _body_lines(node)
    assert not long, f"async functions over {MAX_DRIVER_LINES} lines of body: {long}"


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    source = "async def f():\n    '''doc'''\n" + "    x = 1\n" * (MAX_DRIVER_LINES + 1)
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.AsyncFunctionDef)
    assert _body_lines(node) == MAX_DRIVER_LINES + 1

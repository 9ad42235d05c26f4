"""The mutant registry stays applicable: every protection it names still exists in the code."""

from __future__ import annotations

import re
from pathlib import Path

import mutation
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_registry_loads() -> None:
    mutation.load()


@pytest.mark.parametrize("mutant", mutation.load(), ids=lambda m: m.name)
def test_mutant_applies_and_names_real_tests(mutant: mutation.Mutant) -> None:
    text = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert text.count(mutant.find) == 1, f"{mutant.name}: 'find' must occur exactly once"
    for node in mutant.tests:
        path, _, name = node.partition("::")
        test_file = ROOT / path
        assert test_file.is_file(), f"{mutant.name}: no test file {path}"
        if name:
            leaf = name.split("::")[-1].split("[")[0]
            source = test_file.read_text(encoding="utf-8")
            assert re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(leaf)}\b", source, re.M), (
                f"{mutant.name}: {path} has no test {leaf}"
            )


def test_bad_entries_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[[mutant]]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(mutation.RegistryError, match="lacks"):
        mutation.load(tmp_path)
    (tmp_path / "a.toml").write_text(
        '[[mutant]]\nname="x"\nprotects="p"\nfile="f"\nfind="a"\nreplace="a"\ntests=["t"]\n',
        encoding="utf-8",
    )
    with pytest.raises(mutation.RegistryError, match="the same"):
        mutation.load(tmp_path)


def test_a_mutant_that_does_not_apply_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("x = 1\nx = 1\n", encoding="utf-8")
    m = mutation.Mutant("dup", "p", "f.py", "x = 1", "x = 2", ("t",), "a.toml")
    with pytest.raises(mutation.RegistryError, match="occurs 2 times"):
        m.apply(tmp_path)

"""Mutation run: delete a protection in a scratch copy and check that a test notices.

Theory of operation. Each ``tests/mutants/*.toml`` file lists ``[[mutant]]`` entries::

    [[mutant]]
    name = "no-pair-masks"                   # unique across all files
    protects = "pairwise masks hide each input from the ring"
    file = "p2pfed/secagg/protocol.py"       # relative to the repository root
    find = "..."                             # exact text; must occur exactly once
    replace = "..."                          # what the protection becomes without it
    tests = ["tests/test_secagg_attacks.py::test_ring_sees_only_masked_words"]

For each mutant the runner copies the working tree (tracked and untracked, not ignored files)
into a temporary folder, applies the one replacement, and runs pytest on the listed tests
there. pytest exiting 1 (a test failed) means the mutant was *killed*; exiting 0 means it
*survived* (the protection is not observed by its tests); any other exit (collection or usage
error, no tests) is an *error*, since a protection must be seen by an assertion, not by an
import failure. The run exits 0 only when every selected mutant was killed.

``python tests/mutation.py [--only NAME ...] [--json] [--list]``; ``make mutants`` runs all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "tests" / "mutants"
TIMEOUT_S = 900


class RegistryError(Exception):
    """A mutant entry that cannot be applied as written."""


@dataclass(frozen=True)
class Mutant:
    """One protection removed: ``find`` replaced by ``replace`` in ``file``."""

    name: str
    protects: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    source: str

    def apply(self, root: Path) -> None:
        """Rewrite ``root / file`` with the protection removed (exactly one occurrence)."""
        path = root / self.file
        text = path.read_text(encoding="utf-8")
        count = text.count(self.find)
        if count != 1:
            raise RegistryError(
                f"mutant {self.name!r} ({self.source}): its 'find' text occurs {count} times "
                f"in {self.file}, not exactly once"
            )
        path.write_text(text.replace(self.find, self.replace), encoding="utf-8")


_FIELDS = ("name", "protects", "file", "find", "replace", "tests")


def load(registry: Path = REGISTRY) -> list[Mutant]:
    """Every mutant in ``registry/*.toml``; raises ``RegistryError`` naming a bad entry."""
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for toml_path in sorted(registry.glob("*.toml")):
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        for i, entry in enumerate(data.get("mutant", [])):
            where = f"{toml_path.name} entry {i + 1}"
            missing = [f for f in _FIELDS if f not in entry]
            if missing:
                raise RegistryError(f"{where} lacks {', '.join(missing)}")
            tests = entry["tests"]
            if not isinstance(tests, list) or not tests:
                raise RegistryError(f"{where}: 'tests' must be a non-empty list")
            if entry["find"] == entry["replace"]:
                raise RegistryError(f"{where}: 'find' and 'replace' are the same")
            if entry["name"] in seen:
                raise RegistryError(f"{where}: the name {entry['name']!r} is used twice")
            seen.add(entry["name"])
            mutants.append(
                Mutant(
                    name=entry["name"],
                    protects=entry["protects"],
                    file=entry["file"],
                    find=entry["find"],
                    replace=entry["replace"],
                    tests=tuple(tests),
                    source=toml_path.name,
                )
            )
    return mutants


def _tree_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def _copy_tree(root: Path, dest: Path) -> None:
    for rel in _tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_one(mutant: Mutant, root: Path = ROOT) -> dict[str, object]:
    """Apply ``mutant`` in a scratch copy of ``root`` and run its tests there."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        scratch = Path(tmp)
        _copy_tree(root, scratch)
        mutant.apply(scratch)
        env = dict(os.environ, PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                 *mutant.tests],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            rc = proc.returncode
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        except subprocess.TimeoutExpired:
            rc, tail = -1, [f"timed out after {TIMEOUT_S} s"]
    verdict = {0: "survived", 1: "killed"}.get(rc, "error")
    return {
        "name": mutant.name,
        "protects": mutant.protects,
        "verdict": verdict,
        "rc": rc,
        "seconds": round(time.monotonic() - started, 1),
        "tail": tail,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected mutants; exit 0 only if every one was killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names to run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    try:
        mutants = load()
    except (RegistryError, tomllib.TOMLDecodeError) as exc:
        print(f"mutation: {exc}", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            print(f"mutation: no mutant named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:32} {m.file}: {m.protects}")
        return 0
    results = []
    for i, m in enumerate(mutants, 1):
        if not args.json:
            print(f"[{i}/{len(mutants)}] {m.name} ({m.file}) ...", end=" ", flush=True)
        try:
            result = run_one(m)
        except RegistryError as exc:
            result = {"name": m.name, "protects": m.protects, "verdict": "error",
                      "rc": -2, "seconds": 0.0, "tail": [str(exc)]}
        results.append(result)
        if not args.json:
            print(f"{result['verdict']} in {result['seconds']} s")
            if result["verdict"] != "killed":
                print("    " + "\n    ".join(map(str, result["tail"])))
    killed = sum(r["verdict"] == "killed" for r in results)
    if args.json:
        print(json.dumps({"mutants": results, "killed": killed, "total": len(results)}))
    else:
        print(f"{killed} of {len(results)} mutants killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

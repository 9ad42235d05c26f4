"""Checking scenarios before anything runs: every bad key reported, one sentence each.

Theory of operation: parsing a scenario stops at its first bad key, and some mistakes (a
mistyped generator, a graph file with the wrong node count, a loader that does not import)
would otherwise surface only when a point starts, perhaps hours into a sweep. So the CLI
first parses each table of the document on its own, dropping each key an error names and
parsing again (every bad key gets its sentence); then, for every scenario it is about to
run (each sweep point), it checks what the dataclasses cannot: the data set or loader,
the partition file, the model factory and the topology (built or loaded once per distinct
spec and N). All sentences are gathered, duplicates dropped, and raised together as one
``ConfigError``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.settings import SettingError
from sim.scenario import Scenario, read_scenario_document, scenario_from_dict

#: Algorithms that mix over the topology (the others never build it).
TOPOLOGY_ALGORITHMS = ("gossip", "gradient_tracking")


CONTEXT_KEYS = ("n", "algorithm", "training")
"""What other tables' rules refer to: a table is parsed beside those of its document that
parse on their own (a bad one would mask the table's own problems)."""


def _key_problems(key: str, value: Any, context: Mapping[str, Any]) -> list[str]:
    """Every bad key of one table: parse, drop the key an error names, parse again."""
    problems: list[str] = []
    table = dict(value) if isinstance(value, Mapping) else value
    while True:
        try:
            scenario_from_dict({**context, key: table})
            return problems
        except SettingError as exc:
            problems.append(str(exc))
            name = exc.where.rpartition("] ")[2].split(".")[0].split("[")[0]
            if not isinstance(table, dict) or name not in table:
                return problems
            del table[name]
        except ConfigError as exc:  # a rule across keys: nothing single to drop
            problems.append(str(exc))
            return problems


def document_problems(raw: Mapping[str, Any]) -> list[str]:
    """One sentence per bad key of a scenario document ([] if it parses)."""
    problems: list[str] = []
    sound = {k: raw[k] for k in CONTEXT_KEYS if k in raw and not _key_problems(k, raw[k], {})}
    for key, value in raw.items():
        context = {k: v for k, v in sound.items() if k != key}
        problems += [p for p in _key_problems(key, value, context) if p not in problems]
    if not problems:
        try:
            scenario_from_dict(raw)  # cross-table rules (e.g. byzantine < n)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def load_checked(path: Path) -> Scenario:
    """Read a scenario file; ``ConfigError`` lists every bad key, one sentence each."""
    raw = read_scenario_document(path)
    problems = document_problems(raw)
    if problems:
        raise ConfigError(_joined(path.name, problems))
    return scenario_from_dict(raw)


def _joined(where: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{where} has {len(problems)} problems:\n  " + "\n  ".join(problems)


def _data_problem(scenario: Scenario) -> str | None:
    from sim.data import dataset_names
    from sim.sources import import_callable

    spec = scenario.data
    if spec.loader:
        import_callable(spec.loader, "[data] loader")
    elif spec.name not in dataset_names():
        return (
            f"scenario key [data] name {spec.name!r} is not a data set; "
            f"expected one of {', '.join(dataset_names())}"
        )
    return None


def _partition_problem(scenario: Scenario) -> None:
    from sim.sources import read_partition_file

    if scenario.partition.file:  # the row range is checked against the data when it runs
        read_partition_file(scenario.partition.file, scenario.n, sys.maxsize)


def _model_problem(scenario: Scenario) -> None:
    from sim.sources import import_callable

    if scenario.model.factory:
        import_callable(scenario.model.factory, "[model] factory")


def _topology_problem(scenario: Scenario, built: dict[tuple[Any, int], str | None]) -> None:
    from sim.mixing import build_topology

    spec = scenario.topology
    if not spec.file and scenario.algorithm.name not in TOPOLOGY_ALGORITHMS:
        return
    key = (spec, scenario.n)
    if key not in built:
        try:
            build_topology(spec, scenario.n, 0)
            built[key] = None
        except ConfigError as exc:
            built[key] = str(exc)
    if built[key] is not None:
        raise ConfigError(built[key])


def scenario_problems(
    scenario: Scenario, built: dict[tuple[Any, int], str | None] | None = None
) -> list[str]:
    """What would make ``scenario`` fail once started (data, partition, model, topology)."""
    built = {} if built is None else built
    problems: list[str] = []
    checks: tuple[Callable[[], str | None], ...] = (
        lambda: _data_problem(scenario),
        lambda: _partition_problem(scenario),
        lambda: _model_problem(scenario),
        lambda: _topology_problem(scenario, built),
    )
    for check in checks:
        try:
            problem = check()
        except ConfigError as exc:
            problem = str(exc)
        if problem is not None:
            problems.append(problem)
    return problems


def preflight(scenarios: Iterable[Scenario], where: str = "the sweep") -> None:
    """Check every scenario before any runs; one ``ConfigError`` lists all distinct problems."""
    built: dict[tuple[Any, int], str | None] = {}
    problems: dict[str, None] = {}
    for scenario in scenarios:
        for problem in scenario_problems(scenario, built):
            problems.setdefault(problem, None)
    if problems:
        raise ConfigError(_joined(where, list(problems)))

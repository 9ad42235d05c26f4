"""Fixtures for namespace scenarios: skipped, with the reason printed, unless root with nft."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pfed.bench._netns.harness import Topology, ours, skip_reason, sweep_stale

REASON = skip_reason()


def pytest_report_header() -> str:
    return f"netns: {'skipped: ' + REASON if REASON else 'enabled (root, nftables)'}"


@pytest.fixture
def topology_factory(tmp_path: Path) -> Iterator[object]:
    if REASON:
        print(f"SKIPPED tests/netns: {REASON}")
        pytest.skip(REASON)
    sweep_stale()
    made: list[Topology] = []

    def make(
        hospitals: int,
        public: tuple[int, ...] = (),
        nat: str = "symmetric",
        forwards: dict[int, tuple[int, int]] | None = None,
    ) -> Topology:
        topo = Topology(hospitals, tmp_path, public, nat, forwards)
        made.append(topo)
        return topo.build()

    try:
        yield make
    finally:
        for topo in made:
            topo.close()
        assert not ours(), f"namespaces left behind: {ours()}"

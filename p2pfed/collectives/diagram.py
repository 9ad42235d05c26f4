"""State diagrams generated from the protocols' transition tables.

Theory of operation: every protocol here keeps its legal moves in one dict
``{(state, trigger): next_state}``; ``mermaid`` renders such a table as a Mermaid
``stateDiagram-v2`` block, so the diagrams in ``docs/protocols.md`` are produced from the code
and a test checks they are still identical (``python -m p2pfed.collectives.diagram FILE``
rewrites the diagrams after each ``<!-- diagram:NAME -->`` marker of FILE).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from typing import TypeVar

from p2pfed.collectives.agreement_state import AGREEMENT_TRANSITIONS, FINAL_PHASES, Phase
from p2pfed.collectives.gossip import GOSSIP_TRANSITIONS, GossipState
from p2pfed.collectives.ring import RING_TRANSITIONS, RingState

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def mermaid(
    transitions: Mapping[tuple[S, E], S],
    initial: S,
    finals: frozenset[S] | set[S] = frozenset(),
) -> str:
    """A Mermaid state diagram of ``transitions``, starting at ``initial``."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {initial.name}"]
    for (state, trigger), target in transitions.items():
        lines.append(f"    {state.name} --> {target.name}: {trigger.value}")
    lines += [f"    {state.name} --> [*]" for state in sorted(finals, key=lambda s: s.name)]
    lines.append("```")
    return "\n".join(lines)


def diagrams() -> dict[str, str]:
    """Every protocol's diagram, by protocol name."""
    return {
        "ring": mermaid(RING_TRANSITIONS, RingState.READY, {RingState.DONE, RingState.FAILED}),
        "agreement": mermaid(AGREEMENT_TRANSITIONS, Phase.IDLE, set(FINAL_PHASES)),
        "gossip": mermaid(GOSSIP_TRANSITIONS, GossipState.WAITING, {GossipState.MIXED}),
    }


def render_document(text: str) -> str:
    """``text`` with each ``<!-- diagram:NAME -->`` marker followed by NAME's diagram.

    Idempotent: a diagram already following its marker is replaced, not duplicated.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    found = diagrams()
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.startswith("<!-- diagram:") and line.endswith(" -->"):
            name = line[len("<!-- diagram:") : -len(" -->")]
            out.append(found[name])
            if i < len(lines) and lines[i] == "```mermaid":
                while i < len(lines) and lines[i] != "```":
                    i += 1
                i += 1
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 2:
        with open(sys.argv[1], encoding="utf-8") as handle:
            rendered = render_document(handle.read())
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            handle.write(rendered)
    else:
        for name, diagram in diagrams().items():
            print(f"<!-- diagram:{name} -->\n{diagram}\n")

"""State diagrams generated from the protocols' transition tables.

Theory of operation: every protocol here keeps its legal moves in one dict
``{(state, trigger): next_state}``; ``mermaid`` renders such a table as a Mermaid
``stateDiagram-v2`` block, so the diagrams in ``docs/protocols.md`` are produced from the code
and a test checks they are still identical (``python -m p2pfed.collectives.diagram`` prints
them).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

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
    from p2pfed.collectives.agreement import AGREEMENT_TRANSITIONS, FINAL_PHASES, Phase
    from p2pfed.collectives.ring import RING_TRANSITIONS, RingState

    return {
        "ring": mermaid(RING_TRANSITIONS, RingState.READY, {RingState.DONE, RingState.FAILED}),
        "agreement": mermaid(AGREEMENT_TRANSITIONS, Phase.IDLE, set(FINAL_PHASES)),
    }


if __name__ == "__main__":
    for name, text in diagrams().items():
        print(f"<!-- {name} -->\n{text}\n")

"""The stages of one peer's secure-aggregation round, with transitions written as data.

Theory of operation: ``TRANSITIONS`` maps (stage, event) to the next stage and is the only
place where the order of the protocol is defined; ``SecAggPeer`` moves only through
``next_stage``, which raises ``LocalProtocolError`` for any pair not in the table.
``ACCEPTS`` says which message kinds a peer stores in each stage: the kinds it is consuming
now plus those a faster neighbour may already send for the next stages (they are buffered,
never processed early); anything else is late or premature and is rejected with
``ReasonCode.UNEXPECTED_STAGE``. ``mermaid()`` renders the table as the state diagram in
docs/secure-aggregation.md, so the picture cannot drift from the code.
"""

from __future__ import annotations

import enum
from typing import Final

from p2pfed.errors import LocalProtocolError
from p2pfed.secagg.messages import MessageKind


class Stage(enum.Enum):
    """Where a peer is in the round."""

    IDLE = "idle"
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    RECEIPTS = "receipts"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


class Event(enum.Enum):
    """What moves a peer from one stage to the next."""

    START = "start, advertise keys"
    KEYS_COLLECTED = "keys collected, deal shares"
    SHARES_COLLECTED = "shares collected, send receipts"
    RECEIPTS_COLLECTED = "receipts collected, mask input, commit mask set"
    SUM_RECEIVED = "masked sum received, sign the survivor set"
    QUORUM_SIGNED = "a quorum signed the same survivor set, reveal shares"
    SECRETS_RECOVERED = "secrets recovered"
    ABORT = "abort"


PROGRESS: Final = (
    Stage.IDLE,
    Stage.ADVERTISE,
    Stage.SHARE_KEYS,
    Stage.RECEIPTS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY,
    Stage.UNMASK,
    Stage.DONE,
)
"""The stages of a round that completes, in order (ABORTED can follow any but DONE)."""

TRANSITIONS: Final[dict[tuple[Stage, Event], Stage]] = {
    (Stage.IDLE, Event.START): Stage.ADVERTISE,
    (Stage.ADVERTISE, Event.KEYS_COLLECTED): Stage.SHARE_KEYS,
    (Stage.SHARE_KEYS, Event.SHARES_COLLECTED): Stage.RECEIPTS,
    (Stage.RECEIPTS, Event.RECEIPTS_COLLECTED): Stage.MASKED_INPUT,
    (Stage.MASKED_INPUT, Event.SUM_RECEIVED): Stage.CONSISTENCY,
    (Stage.CONSISTENCY, Event.QUORUM_SIGNED): Stage.UNMASK,
    (Stage.UNMASK, Event.SECRETS_RECOVERED): Stage.DONE,
    **{(stage, Event.ABORT): Stage.ABORTED for stage in PROGRESS[:-1]},
}

_K = MessageKind
# Key advertisements go to the whole cohort and non-neighbours' keys are only needed to
# check rebuilt secrets at unmasking, so they are accepted until then; a neighbour's keys
# that miss the ADVERTISE deadline are kept for that check but make it no share holder.
ACCEPTS: Final[dict[Stage, frozenset[MessageKind]]] = {
    Stage.IDLE: frozenset({_K.ADVERTISE_KEYS}),
    Stage.ADVERTISE: frozenset({_K.ADVERTISE_KEYS, _K.SHARE_KEYS}),
    Stage.SHARE_KEYS: frozenset(
        {_K.ADVERTISE_KEYS, _K.SHARE_KEYS, _K.SHARE_RECEIPT, _K.INPUT_COMMIT}
    ),
    Stage.RECEIPTS: frozenset({_K.ADVERTISE_KEYS, _K.SHARE_RECEIPT, _K.INPUT_COMMIT}),
    Stage.MASKED_INPUT: frozenset(
        {_K.ADVERTISE_KEYS, _K.INPUT_COMMIT, _K.SURVIVOR_SIGNATURE, _K.REVEAL}
    ),
    Stage.CONSISTENCY: frozenset(
        {_K.ADVERTISE_KEYS, _K.INPUT_COMMIT, _K.SURVIVOR_SIGNATURE, _K.REVEAL}
    ),
    # Signatures that trail the quorum are still checked: one on another set names its signer.
    Stage.UNMASK: frozenset({_K.ADVERTISE_KEYS, _K.INPUT_COMMIT, _K.SURVIVOR_SIGNATURE, _K.REVEAL}),
    # Reveals from slower survivors keep arriving after we finished; stored, never used.
    Stage.DONE: frozenset({_K.SURVIVOR_SIGNATURE, _K.REVEAL}),
    Stage.ABORTED: frozenset(),
}

TERMINAL: Final = frozenset({Stage.DONE, Stage.ABORTED})

PRE_SUM: Final = PROGRESS[PROGRESS.index(Stage.ADVERTISE) : PROGRESS.index(Stage.MASKED_INPUT)]
"""The stages before the masked sum, each left on its messages or at its deadline."""

POST_SUM: Final = PROGRESS[PROGRESS.index(Stage.CONSISTENCY) : PROGRESS.index(Stage.DONE)]
"""The stages after the masked sum that wait for other peers (signatures, then reveals)."""


def accepted_later(stage: Stage, kind: MessageKind) -> bool:
    """Whether ``kind`` is not accepted in ``stage`` but in a stage a round reaches later."""
    if kind in ACCEPTS[stage] or stage in TERMINAL:
        return False
    return any(kind in ACCEPTS[later] for later in PROGRESS[PROGRESS.index(stage) + 1 :])


def next_stage(stage: Stage, event: Event) -> Stage:
    """The stage after ``event`` in ``stage``; ``LocalProtocolError`` if the table forbids it."""
    try:
        return TRANSITIONS[(stage, event)]
    except KeyError:
        raise LocalProtocolError(
            f"secagg cannot handle '{event.value}' in stage {stage.value}"
        ) from None


def accepts_table() -> str:
    """``ACCEPTS`` as a markdown table (stage → message kinds stored in it)."""
    rows = ["| stage | message kinds accepted (buffered until their stage) |", "|---|---|"]
    for stage, kinds in ACCEPTS.items():
        names = ", ".join(k.name for k in sorted(kinds)) or "none"
        rows.append(f"| {stage.value} | {names} |")
    return "\n".join(rows) + "\n"


def mermaid() -> str:
    """The transition table as a mermaid ``stateDiagram-v2``."""
    lines = ["stateDiagram-v2", f"    [*] --> {Stage.IDLE.value}"]
    aborting = []
    for (stage, event), target in TRANSITIONS.items():
        if event is Event.ABORT:
            aborting.append(stage.value)
        else:
            lines.append(f"    {stage.value} --> {target.value}: {event.value}")
    for stage_name in aborting:
        lines.append(f"    {stage_name} --> {Stage.ABORTED.value}: abort with a reason code")
    lines += [f"    {Stage.DONE.value} --> [*]", f"    {Stage.ABORTED.value} --> [*]"]
    return "\n".join(lines) + "\n"

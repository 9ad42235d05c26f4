"""What a message must prove on arrival, before a peer stores it: one check per kind.

Theory of operation: ``SecAggPeer.receive`` first checks the envelope (``check_envelope``: a
cohort peer, this consortium and round, not excluded, not a duplicate, a kind its stage
accepts, a neighbour for directed messages); then the kind's own check looks inside: a key
advertisement carries its sender's signature, shares come after the dealer's keys and from a peer we
dealt to, receipts and mask sets name only the sender's neighbours, a survivor signature
verifies and is the only set its signer signed, and a reveal is for our survivor set and
holds only shares its sender can hold. Each check returns a ``Refusal`` (reason code,
sentence, whether to exclude the sender) or None, and changes nothing, except that a valid
survivor signature is counted in ``SurvivorVotes`` (a second one on another set is the
proof of equivocation, so it is recorded even though the message is refused).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from p2pfed.errors import ReasonCode
from p2pfed.identity.keys import verify_signature
from p2pfed.secagg.consistency import SurvivorVotes, survivor_set_signed_bytes
from p2pfed.secagg.dealing import advert_signed_bytes
from p2pfed.secagg.messages import (
    AdvertiseKeys,
    Message,
    MessageKind,
    Reveal,
    SurvivorSignature,
    kind_of,
)
from p2pfed.secagg.params import CohortPlan, SecAggConfig
from p2pfed.secagg.state import ACCEPTS, Stage


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message is refused, and whether its sender is excluded from the round."""

    reason: ReasonCode
    detail: str
    exclude: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message or a failed verification, for the round's record."""

    peer: str
    reason: ReasonCode
    detail: str


def check_envelope(
    config: SecAggConfig,
    sender: str,
    message: Message,
    *,
    me: str,
    cohort: Collection[str],
    excluded: Collection[str],
    seen: Collection[str],
    stage: Stage,
    neighbours: Collection[str],
) -> Refusal | None:
    """Who may send ``message`` now: ``seen`` are the senders of its kind taken already."""
    kind = kind_of(message)
    if sender not in cohort or sender == me:
        return Refusal(ReasonCode.UNKNOWN_PEER, f"{sender!r} is not another cohort peer")
    if message.consortium != config.consortium:
        return Refusal(ReasonCode.WRONG_CONSORTIUM, "message of another consortium")
    if message.round != config.round:
        return Refusal(ReasonCode.WRONG_ROUND, f"message of round {message.round}")
    # An excluded peer stays out of every share and mask relation, but if its vector
    # made it into the sum its mask set is still needed to unmask.
    if sender in excluded and kind is not MessageKind.INPUT_COMMIT:
        return Refusal(ReasonCode.PROTOCOL_VIOLATION, f"{sender!r} is excluded")
    # A second survivor signature is checked, not refused as a duplicate: one on another
    # set proves its signer equivocated.
    if sender in seen and kind is not MessageKind.SURVIVOR_SIGNATURE:
        return Refusal(ReasonCode.DUPLICATE, f"second {kind.name} from {sender!r}")
    if kind not in ACCEPTS[stage]:
        return Refusal(ReasonCode.UNEXPECTED_STAGE, f"{kind.name} arrived in stage {stage.value}")
    local = kind in (MessageKind.SHARE_KEYS, MessageKind.SHARE_RECEIPT)
    if local and sender not in neighbours:
        return Refusal(ReasonCode.PROTOCOL_VIOLATION, f"{sender!r} is no neighbour")
    return None


def check_advert(
    config: SecAggConfig, public: bytes, sender: str, advert: AdvertiseKeys
) -> Refusal | None:
    """A key advertisement must carry its sender's signature."""
    if not verify_signature(public, advert_signed_bytes(config, sender, advert), advert.signature):
        return Refusal(ReasonCode.BAD_SIGNATURE, "key advertisement signature is invalid", True)
    return None


def check_shares(advertised: bool, dealt_to: bool, dealing: bool) -> Refusal | None:
    """Shares need their dealer's keys first, and once we dealt, a dealer we dealt to."""
    if not advertised:
        return Refusal(ReasonCode.OUT_OF_ORDER, "shares before key advertisement")
    if dealing and not dealt_to:
        return Refusal(ReasonCode.PROTOCOL_VIOLATION, "shares from a peer we left out")
    return None


def check_named(plan: CohortPlan, sender: str, named: Collection[str], what: str) -> Refusal | None:
    """A receipt or a mask set may name only ``sender``'s neighbours."""
    if not set(named) <= plan.neighbours[sender]:
        return Refusal(ReasonCode.PROTOCOL_VIOLATION, f"{what} names non-neighbours", True)
    return None


def check_vote(
    config: SecAggConfig,
    public: bytes,
    votes: SurvivorVotes,
    sender: str,
    vote: SurvivorSignature,
    seen: bool,
) -> Refusal | None:
    """A survivor signature must verify, and be its signer's only set (counted in ``votes``)."""
    signed = survivor_set_signed_bytes(config, vote.survivors_digest)
    if not verify_signature(public, signed, vote.signature):
        return Refusal(ReasonCode.BAD_SIGNATURE, "survivor-set signature is invalid", True)
    if not votes.add(sender, vote.survivors_digest):
        return Refusal(
            ReasonCode.PROTOCOL_VIOLATION,
            "signed two different survivor sets in one round (equivocation)",
            True,
        )
    if seen:
        return Refusal(ReasonCode.DUPLICATE, "second survivor signature")
    return None


def check_reveal(
    plan: CohortPlan,
    identities: Mapping[str, bytes],
    sender: str,
    reveal: Reveal,
    digest: bytes,
) -> Refusal | None:
    """A reveal must be for our survivor set (``digest``, once known).

    And hold only shares its sender was dealt.
    """
    if digest and reveal.survivors_digest != digest:
        return Refusal(ReasonCode.PROTOCOL_VIOLATION, "reveal for another survivor set", True)
    for share in reveal.shares:
        dealer = share.dealer  # sender ∈ holders(dealer), without building that set per share
        if dealer not in identities or (sender != dealer and sender not in plan.neighbours[dealer]):
            return Refusal(
                ReasonCode.PROTOCOL_VIOLATION,
                f"reveal of a share of {share.dealer!r} it cannot hold",
                True,
            )
    return None

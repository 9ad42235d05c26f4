"""One peer's side of serverless secure aggregation (double masking), as a sans-I/O object.

Theory of operation (Bonawitz et al. 2017, with SecAgg+ neighbourhoods, no server):

1. ADVERTISE: the peer broadcasts two fresh X25519 public keys (c for sealing shares,
   s for pair masks) and a commitment to its self-mask seed b, signed by its Ed25519 identity.
2. SHARE_KEYS: once its neighbours' keys are in (or the stage deadline passed), it
   Shamir-shares b and the s secret among its holders (neighbours + itself, threshold t),
   signs every share, and seals each holder's pair of shares with a key derived from the c
   agreement for that direction. It verifies the shares it receives (seal, dealer signature).
3. RECEIPTS: it tells each neighbour whose shares it accepted; a pair {u, v} is masked only
   if both accepted each other's shares, so pair masks are symmetric between survivors.
4. MASKED_INPUT: y = x + PRG(b) + Σ ±PRG(s_uv) over the mask set, which it broadcasts as an
   ``InputCommit`` before handing y to the pluggable ``MaskedSum``.
5. CONSISTENCY: given the masked sum and its contributors S — after checking that S holds at
   least ``min_contributors`` inputs, that every mask set is known and symmetric, that the
   survivors' pair masks connect them all and that every needed secret has t surviving
   holders — it signs S and sends the signature to the cohort (``consistency``).
6. UNMASK: once a quorum of S signed S, it reveals, once, for S only, its shares of b
   for dealers in S and of s for dealers outside S whose masks sit in the sum; never both
   for one dealer (S and the dropped set are disjoint, and a second, different S is
   refused). Reveals tied to another S (digest) are rejected. With t shares per secret it
   rebuilds each secret, checks it against the seed commitment or the advertised s key,
   and on a mismatch checks dealer signatures to name and exclude the peer that lied.
7. DONE: ``result()`` removes the recovered masks from the sum (computed on demand: it costs
   one keystream pass per survivor and per dropped pair).

I/O is the caller's: ``start``/``receive``/``deadline``/``receive_sum`` return
``Outgoing(to, message)`` lists (``session.SecAggSession`` adds bytes, time and hold-back).
Steps live in ``dealing`` (keys, shares, masking), ``admission`` (what a message must
prove on arrival) and ``recovery`` (survivor checks, unmasking). A refused message raises
``RemoteProtocolError`` (reason code, sender) and changes nothing; a peer whose keys or
shares fail verification is excluded and named in ``excluded``. Too few survivors or
holders ends the round in ABORTED (``abort_code``/``abort_reason``), nothing revealed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np

from p2pfed.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.identity.keys import Signer
from p2pfed.secagg import admission
from p2pfed.secagg.admission import Refusal, Rejection
from p2pfed.secagg.consistency import SurvivorVotes, survivor_set_signed_bytes
from p2pfed.secagg.dealing import KeyExchange
from p2pfed.secagg.messages import (
    AdvertiseKeys,
    InputCommit,
    Message,
    MessageKind,
    Reveal,
    RevealedShare,
    ShareKeys,
    ShareReceipt,
    SurvivorSignature,
    decode,
    kind_of,
)
from p2pfed.secagg.params import CohortPlan, SecAggConfig, check_input, plan_cohort
from p2pfed.secagg.primitives import MaskExpander, RandomBytes, UIntVector, ring_dtype
from p2pfed.secagg.recovery import Recovery, check_survivors, plan_reveal
from p2pfed.secagg.state import ACCEPTS, TERMINAL, Event, Stage, accepted_later, next_stage

Input = UIntVector | Callable[[], UIntVector]
"""A peer's quantised input, or what makes it once its share holders are fixed."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to send to one peer (broadcasts are one ``Outgoing`` per recipient)."""

    to: str
    message: Message


class SecAggPeer:
    """The protocol state of one peer in one round (see the module docstring)."""

    def __init__(
        self,
        config: SecAggConfig,
        me: str,
        signer: Signer,
        identities: Mapping[str, bytes],
        random_bytes: RandomBytes = os.urandom,
        expander: MaskExpander | None = None,
    ) -> None:
        """``identities`` maps every cohort peer ID to its Ed25519 public key."""
        self.config = config
        self.plan: CohortPlan = plan_cohort(config, frozenset(identities))
        if me not in identities:
            raise ConfigError(f"peer {me!r} is not in the cohort it was given")
        if signer.public_key != identities[me]:
            raise ConfigError(f"the signer's public key is not the cohort's key for {me!r}")
        self.me = me
        self._signer = signer
        self._identities = dict(identities)
        self._expander = expander or MaskExpander()
        self._exchange = KeyExchange(config, self.plan, me, signer, self._identities, random_bytes)
        self.stage = Stage.IDLE
        self.neighbours = self.plan.neighbours[me]
        self.excluded: dict[str, ReasonCode] = {}
        self.rejections: list[Rejection] = []
        self.abort_code: ReasonCode | None = None
        self.abort_reason: str | None = None
        self._inbox: dict[MessageKind, dict[str, Message]] = {k: {} for k in MessageKind}
        self._shared_with: frozenset[str] = frozenset()
        self._accepted: frozenset[str] = frozenset()
        self.mask_set: frozenset[str] = frozenset()
        self._input: Input | None = None
        self._copy = True
        self.masked_vector: UIntVector | None = None
        self._total: UIntVector | None = None
        self.survivors: frozenset[str] = frozenset()
        self.dropped: frozenset[str] = frozenset()
        self._commits: dict[str, frozenset[str]] = {}
        self._recovery: Recovery | None = None
        self._reveal_seen: set[str] = set()
        self._digest = b""
        self._votes = SurvivorVotes()
        self._result: UIntVector | None = None
        self._shared = False

    # ----------------------------------------------------------------- public API

    def start(self, words: Input, *, copy: bool = True) -> list[Outgoing]:
        """Begin the round with this peer's quantised input; returns the key advertisements.

        ``words`` may be a callable, called once, only when the input is masked (its share
        holders are fixed): a round that aborts before then never draws the input, so a
        privacy release behind the callable is never charged for it. With ``copy=False``
        the peer masks the words in place (a writable, contiguous array no longer needed).
        """
        self._copy = copy
        self._input = words if callable(words) else check_input(self.config, words, copy)
        self._move(Event.START)
        advert = self._exchange.advertise()
        # Everyone gets the keys, not just neighbours: unmasking checks rebuilt secrets
        # against them and needs survivors' mask keys to remove dropped peers' pair masks.
        return self._broadcast(advert, self.plan.peers) + self._advance()

    def decode_from(self, sender: str, data: bytes) -> Message:
        """The message in ``data``; ``RemoteProtocolError`` excluding ``sender`` if malformed."""
        try:
            return decode(data)
        except RemoteProtocolError as exc:
            self._reject(sender, exc.reason, str(exc), exclude=True)
            raise RemoteProtocolError(exc.reason, str(exc), sender) from None

    def receive_bytes(self, sender: str, data: bytes) -> list[Outgoing]:
        """Decode and handle ``data`` from ``sender``; see ``receive``."""
        return self.receive(sender, self.decode_from(sender, data))

    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        """Handle ``message`` from the authenticated ``sender``; returns what to send.

        Raises ``RemoteProtocolError`` (sender and reason code attached) for a message from
        outside the cohort or the neighbourhood, of another consortium or round (replay),
        a duplicate, one this stage does not accept, or one that fails verification.
        """
        kind = kind_of(message)
        refusal = admission.check_envelope(
            self.config,
            sender,
            message,
            me=self.me,
            cohort=self._identities,
            excluded=self.excluded,
            seen=self._inbox[kind],
            stage=self.stage,
            neighbours=self.neighbours,
        ) or self._check_on_arrival(sender, message)
        if refusal is not None:
            self._refuse(sender, refusal.reason, refusal.detail, exclude=refusal.exclude)
        self._inbox[kind][sender] = message
        if isinstance(message, AdvertiseKeys):
            self._exchange.adverts[sender] = message
        return self._advance()

    def is_early(self, sender: str, message: Message) -> bool:
        """Whether ``message`` came before what it depends on (see ``session``: held back)."""
        if message.round != self.config.round or message.consortium != self.config.consortium:
            return False
        kind = kind_of(message)
        if kind is MessageKind.SHARE_KEYS and sender not in self._exchange.adverts:
            return kind in ACCEPTS[self.stage]
        return accepted_later(self.stage, kind)

    @property
    def committed(self) -> frozenset[str]:
        """This peer and every peer whose mask-set commitment was taken."""
        return frozenset(self._inbox[MessageKind.INPUT_COMMIT]) | {self.me}

    def deadline(self) -> list[Outgoing]:
        """The current stage's deadline passed: go on with what arrived, or abort."""
        match self.stage:
            case Stage.ADVERTISE:
                return self._finish_advertise() + self._advance()
            case Stage.SHARE_KEYS:
                return self._finish_shares() + self._advance()
            case Stage.RECEIPTS:
                return self._finish_receipts() + self._advance()
            case Stage.MASKED_INPUT:
                self._abort(ReasonCode.TIMEOUT, "no masked sum arrived before the deadline")
            case Stage.CONSISTENCY:
                shortfall = self._votes.shortfall(self._digest, self.survivors, self.plan.quorum)
                self._abort(ReasonCode.TIMEOUT, shortfall)
            case Stage.UNMASK:
                missing = self._recovery.missing() if self._recovery is not None else []
                self._abort(
                    ReasonCode.TIMEOUT,
                    f"too few valid shares arrived to unmask the secrets of {missing}",
                )
            case _:
                pass
        return []

    def receive_sum(
        self, total: UIntVector, contributors: Iterable[str], *, shared: bool = False
    ) -> list[Outgoing]:
        """The masked sum of ``contributors``' vectors: check it and sign the survivor set.

        Shares are revealed later, once, when a quorum of survivors signed the same set.
        A ``shared`` total (one array for a whole in-process cohort) is kept by reference,
        never written, and copied only by ``result()``.

        Aborts (nothing revealed) when this peer is not a contributor, too few peers
        contributed, a contributor's mask set or keys are unknown, two contributors disagree
        on their pair mask, the survivors' pair masks fall apart into separate groups, or
        some needed secret has fewer than t surviving holders. Raises ``LocalProtocolError``
        when called outside MASKED_INPUT (in particular a second time: a peer reveals for one
        survivor set only) and ``DataError`` for a sum of the wrong dtype or length.
        """
        survivors = frozenset(contributors)
        if self.stage is not Stage.MASKED_INPUT:
            raise LocalProtocolError(
                f"a masked sum can be taken once, in stage masked_input (now {self.stage.value})"
            )
        dtype = ring_dtype(self.config.ring_bits)
        if total.dtype != dtype or total.shape != (self.config.dimension,):
            raise DataError(f"the masked sum must be a {dtype.__name__} vector of the dimension")
        for peer, message in self._inbox[MessageKind.INPUT_COMMIT].items():
            if isinstance(message, InputCommit):
                self._commits[peer] = frozenset(message.mask_set)
        adverts = self._exchange.adverts
        problem = check_survivors(self.plan, self.me, survivors, self._commits, adverts)
        if problem is not None:
            self._abort(*problem)
            return []
        recovery = self._recovery = Recovery(
            self.config, self.plan, self._identities, adverts, survivors, self._commits
        )
        self.survivors, self.dropped = survivors, recovery.dropped
        digest = self._digest = recovery.digest
        # The masked vector's buffer is free once summed: reuse it for the total, so a peer
        # never holds more than its input, one working vector and the incoming sum.
        buffer = total if shared else self.masked_vector
        if buffer is None:
            buffer = cast(UIntVector, np.empty(self.config.dimension, dtype=dtype))
        if buffer is not total:
            np.copyto(buffer, total)
        self._total, self._shared, self.masked_vector = buffer, shared, None
        self._move(Event.SUM_RECEIVED)
        signature = self._signer.sign(survivor_set_signed_bytes(self.config, digest))
        self._votes.add(self.me, digest)
        vote = SurvivorSignature(self.config.consortium, self.config.round, digest, signature)
        return self._broadcast(vote, self.plan.peers) + self._advance()

    def result(self) -> UIntVector:
        """The unmasked sum of the survivors' inputs (mod 2^k), computed once on demand."""
        if self.stage is not Stage.DONE or self._total is None or self._recovery is None:
            raise LocalProtocolError(f"no result in stage {self.stage.value}")
        total, self._total = self._total, None
        total = total.copy() if self._shared else total  # a shared total is never written
        self._result = self._recovery.unmask(total, self._expander)
        return self._result

    def held_bytes(self) -> int:
        """Bytes of vectors this peer holds now (input, masked vector, sum, result)."""
        held = (self._input, self.masked_vector, self._total, self._result)
        arrays = {id(a): a for a in held if a is not None and not callable(a)}
        return sum(a.nbytes for a in arrays.values())

    @property
    def done(self) -> bool:
        """Whether the round ended (DONE or ABORTED)."""
        return self.stage in TERMINAL

    # ----------------------------------------------------------------- helpers

    def _broadcast(self, message: Message, to: Iterable[str]) -> list[Outgoing]:
        return [Outgoing(peer, message) for peer in sorted(to) if peer != self.me]

    def _move(self, event: Event) -> None:
        self.stage = next_stage(self.stage, event)

    def _abort(self, code: ReasonCode, reason: str) -> None:
        self._move(Event.ABORT)
        self.abort_code, self.abort_reason = code, reason
        self._input = self.masked_vector = self._total = None

    def _reject(self, peer: str, reason: ReasonCode, detail: str, *, exclude: bool) -> None:
        self.rejections.append(Rejection(peer, reason, detail))
        if exclude and peer in self._identities and peer != self.me:
            self.excluded.setdefault(peer, reason)

    def _exclude(self, peer: str, reason: ReasonCode, detail: str) -> None:
        self._reject(peer, reason, detail, exclude=True)

    def _refuse(self, peer: str, reason: ReasonCode, detail: str, *, exclude: bool = False) -> None:
        self._reject(peer, reason, detail, exclude=exclude)
        raise RemoteProtocolError(reason, f"secagg: {detail}", peer)

    def _check_on_arrival(self, sender: str, message: Message) -> Refusal | None:
        public = self._identities[sender]
        match message:
            case AdvertiseKeys():
                return admission.check_advert(self.config, public, sender, message)
            case ShareKeys():
                dealing = self.stage is Stage.SHARE_KEYS
                dealt_to = sender in self._shared_with
                advertised = sender in self._exchange.adverts
                return admission.check_shares(advertised, dealt_to, dealing)
            case ShareReceipt():
                return admission.check_named(self.plan, sender, message.received_from, "receipt")
            case InputCommit():
                return admission.check_named(self.plan, sender, message.mask_set, "mask set")
            case SurvivorSignature():
                seen = sender in self._inbox[MessageKind.SURVIVOR_SIGNATURE]
                return admission.check_vote(self.config, public, self._votes, sender, message, seen)
            case Reveal():
                return admission.check_reveal(
                    self.plan, self._identities, sender, message, self._digest
                )

    def _expected(self, kind: MessageKind, among: Iterable[str]) -> bool:
        inbox = self._inbox[kind]
        return all(p in inbox for p in among if p not in self.excluded)

    def _advance(self) -> list[Outgoing]:
        """Take every transition whose inputs are complete."""
        out: list[Outgoing] = []
        while True:
            if self.stage is Stage.ADVERTISE and self._expected(
                MessageKind.ADVERTISE_KEYS, self.neighbours
            ):
                out += self._finish_advertise()
            elif self.stage is Stage.SHARE_KEYS and self._expected(
                MessageKind.SHARE_KEYS, self._shared_with - {self.me}
            ):
                out += self._finish_shares()
            elif self.stage is Stage.RECEIPTS and self._expected(
                MessageKind.SHARE_RECEIPT, self._accepted
            ):
                out += self._finish_receipts()
            elif self.stage is Stage.CONSISTENCY:
                revealed, sent = self._consistency()
                out += sent
                if not revealed:
                    return out
            elif self.stage is Stage.UNMASK:
                self._unmask_step()
                return out
            else:
                return out

    def _finish_advertise(self) -> list[Outgoing]:
        live = frozenset(p for p in self._exchange.adverts if p in self.neighbours)
        holders = live | {self.me}
        if len(holders) < self.plan.threshold:
            self._abort(
                ReasonCode.DROPPED,
                f"only {len(holders)} share holders advertised keys, "
                f"threshold is {self.plan.threshold}",
            )
            return []
        self._shared_with = holders
        self._move(Event.KEYS_COLLECTED)
        sealed = self._exchange.deal(holders)
        # Shares that came early from peers we did not deal to are useless now.
        for peer in list(self._inbox[MessageKind.SHARE_KEYS]):
            if peer not in holders:
                del self._inbox[MessageKind.SHARE_KEYS][peer]
                self._reject(
                    peer,
                    ReasonCode.PROTOCOL_VIOLATION,
                    "shares from a peer left out",
                    exclude=False,
                )
        return [Outgoing(peer, message) for peer, message in sealed]

    def _finish_shares(self) -> list[Outgoing]:
        for dealer, message in self._inbox[MessageKind.SHARE_KEYS].items():
            if dealer in self.excluded or not isinstance(message, ShareKeys):
                continue
            if not self._exchange.open(dealer, message):
                self._exclude(dealer, ReasonCode.BAD_SHARE, "sealed shares failed verification")
        self._accepted = frozenset(self._exchange.held) - {self.me}
        self._move(Event.SHARES_COLLECTED)
        receipt = ShareReceipt(
            self.config.consortium, self.config.round, tuple(sorted(self._accepted))
        )
        return self._broadcast(receipt, self._accepted)

    def _finish_receipts(self) -> list[Outgoing]:
        mask_set = set()
        for peer in self._accepted:
            receipt = self._inbox[MessageKind.SHARE_RECEIPT].get(peer)
            if (
                peer not in self.excluded
                and isinstance(receipt, ShareReceipt)
                and self.me in receipt.received_from
            ):
                mask_set.add(peer)
        self.mask_set = frozenset(mask_set)
        if not self.mask_set:
            # With no pair mask, the self mask alone would hide the input, and its seed is
            # revealed at unmasking: refuse to contribute rather than expose the input.
            self._abort(ReasonCode.DROPPED, "no neighbour completed the share exchange with us")
            return []
        live = len(self._exchange.adverts)  # keys went to everyone: the peers still here
        if live < self.plan.min_survivors:
            # No sum can hold enough inputs: the input is not even made (nor its ε spent).
            self._abort(
                ReasonCode.DROPPED,
                f"only {live} peers advertised keys, a sum needs {self.plan.min_survivors}",
            )
            return []
        assert self._input is not None
        source, self._input = self._input, None
        vector = check_input(self.config, source(), self._copy) if callable(source) else source
        self._exchange.mask(vector, self.mask_set, self._expander)
        self.masked_vector = vector
        self._commits[self.me] = self.mask_set
        self._move(Event.RECEIPTS_COLLECTED)
        commit = InputCommit(
            self.config.consortium, self.config.round, tuple(sorted(self.mask_set))
        )
        # Excluded peers get it too: if their vectors reach the sum they must unmask it.
        return self._broadcast(commit, self.plan.peers)

    def _consistency(self) -> tuple[bool, list[Outgoing]]:
        """Reveal once a quorum of survivors signed our set (True); abort once none can."""
        live = self.survivors - self.excluded.keys()
        if len(self._votes.signers(self._digest, live)) >= self.plan.quorum:
            return True, self._reveal()
        hopeless = self._votes.unreachable(
            self._digest, self.survivors, self.excluded.keys(), self.plan.quorum
        )
        if hopeless is not None:
            self._abort(ReasonCode.PROTOCOL_VIOLATION, hopeless)
        return False, []

    def _reveal(self) -> list[Outgoing]:
        """Reveal this peer's shares for the survivor set a quorum signed (once)."""
        held = self._exchange.held
        reveal_plan = plan_reveal(held, self.survivors, self.dropped)
        shares = tuple(
            RevealedShare(dealer, kind, *held[dealer].of(kind))
            for dealer, kind in sorted(reveal_plan.items())
        )
        reveal = Reveal(self.config.consortium, self.config.round, self._digest, shares)
        self._move(Event.QUORUM_SIGNED)
        self._use_reveal(self.me, reveal)
        return self._broadcast(reveal, self.survivors)

    def _use_reveal(self, sender: str, message: Reveal) -> None:
        assert self._recovery is not None
        refusal = self._recovery.take(sender, message)
        if refusal is not None:
            self._reject(sender, refusal.reason, refusal.detail, exclude=refusal.exclude)

    def _unmask_step(self) -> None:
        """Use the reveals not seen yet; DONE once every needed secret is rebuilt."""
        assert self._recovery is not None
        inbox = self._inbox[MessageKind.REVEAL]
        for sender in inbox.keys() - self._reveal_seen:
            message = inbox[sender]
            self._reveal_seen.add(sender)
            if isinstance(message, Reveal):
                self._use_reveal(sender, message)
        if self._recovery.recover(self.excluded, self._exclude):
            self._move(Event.SECRETS_RECOVERED)
        elif (dealer := self._recovery.bad_dealer) is not None:
            self._abort(
                ReasonCode.BAD_SHARE, f"{dealer!r} dealt shares that do not rebuild its secret"
            )

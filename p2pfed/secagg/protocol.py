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
``Outgoing(to, message)`` lists. A message refused on arrival raises ``RemoteProtocolError``
(reason code, sender) and changes nothing; a peer whose keys or shares fail verification is
excluded and named in ``excluded``. Too few survivors or holders ends the round in ABORTED
with ``abort_code``/``abort_reason`` before anything is revealed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from p2pfed.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.secagg import shamir
from p2pfed.secagg.consistency import SurvivorVotes, survivor_set_signed_bytes
from p2pfed.secagg.messages import (
    AdvertiseKeys,
    InputCommit,
    Message,
    MessageKind,
    Reveal,
    RevealedShare,
    ShareKeys,
    ShareKind,
    ShareReceipt,
    SurvivorSignature,
    decode,
    kind_of,
)
from p2pfed.secagg.params import CohortPlan, SecAggConfig, plan_cohort
from p2pfed.secagg.primitives import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    AgreementKeyPair,
    MaskExpander,
    RandomBytes,
    Signer,
    UIntVector,
    agree,
    commitment,
    domain,
    mask_vector,
    pair_mask_key,
    ring_dtype,
    self_mask_key,
    share_encryption_key,
    verify_signature,
)
from p2pfed.secagg.state import ACCEPTS, PROGRESS, TERMINAL, Event, Stage, next_stage


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to send to one peer (broadcasts are one ``Outgoing`` per recipient)."""

    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message or a failed verification, for the round's record."""

    peer: str
    reason: ReasonCode
    detail: str


@dataclass(frozen=True, slots=True)
class _Held:
    """The two shares a dealer gave us, with the dealer's signatures."""

    seed_share: bytes
    mask_share: bytes
    seed_signature: bytes
    mask_signature: bytes


def _advert_signed_bytes(config: SecAggConfig, peer: str, advert: AdvertiseKeys) -> bytes:
    return domain(
        "advertise",
        config.consortium,
        config.round,
        peer,
        advert.channel_public,
        advert.mask_public,
        advert.seed_commitment,
    )


def share_signed_bytes(
    config: SecAggConfig, dealer: str, holder: str, kind: ShareKind, share: bytes
) -> bytes:
    """What a dealer signs for one share: binds round, dealer, holder and the secret's kind."""
    return domain("share", config.consortium, config.round, dealer, holder, int(kind), share)


def survivors_digest(config: SecAggConfig, survivors: Iterable[str]) -> bytes:
    """SHA-256 naming a survivor set for this round; reveals for another set are refused."""
    return hashlib.sha256(
        domain("survivors", config.consortium, config.round, *sorted(survivors))
    ).digest()


def plan_reveal(
    held: Iterable[str], survivors: frozenset[str], dropped: frozenset[str]
) -> dict[str, ShareKind]:
    """Which share to reveal for each dealer whose shares we hold.

    The seed share if the dealer survived, the pair-secret share if it dropped and its masks
    are in the sum, nothing otherwise.

    Raises ``LocalProtocolError`` for a request that would reveal both secrets of a peer.
    """
    both = survivors & dropped
    if both:
        raise LocalProtocolError(
            f"refusing to reveal both the self-mask seed and the pair secret of {sorted(both)}"
        )
    plan = {}
    for dealer in held:
        if dealer in survivors:
            plan[dealer] = ShareKind.SELF_SEED
        elif dealer in dropped:
            plan[dealer] = ShareKind.PAIR_SECRET
    return plan


def _components(survivors: frozenset[str], commits: Mapping[str, frozenset[str]]) -> int:
    """Number of connected groups of ``survivors`` under their pair masks."""
    unseen = set(survivors)
    groups = 0
    while unseen:
        groups += 1
        frontier = [unseen.pop()]
        while frontier:
            for other in commits[frontier.pop()] & unseen:
                unseen.discard(other)
                frontier.append(other)
    return groups


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
        self._random = random_bytes
        self._expander = expander or MaskExpander()
        self._channel = AgreementKeyPair.generate(random_bytes)
        self._mask = AgreementKeyPair.generate(random_bytes)
        self._seed = random_bytes(KEY_BYTES)
        self.stage = Stage.IDLE
        self.neighbours = self.plan.neighbours[me]
        self.excluded: dict[str, ReasonCode] = {}
        self.rejections: list[Rejection] = []
        self.abort_code: ReasonCode | None = None
        self.abort_reason: str | None = None
        self._inbox: dict[MessageKind, dict[str, Message]] = {k: {} for k in MessageKind}
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._held: dict[str, _Held] = {}
        self._shared_with: frozenset[str] = frozenset()
        self._accepted: frozenset[str] = frozenset()
        self.mask_set: frozenset[str] = frozenset()
        self._input: UIntVector | None = None
        self.masked_vector: UIntVector | None = None
        self._total: UIntVector | None = None
        self.survivors: frozenset[str] = frozenset()
        self.dropped: frozenset[str] = frozenset()
        self._commits: dict[str, frozenset[str]] = {}
        self._needed: dict[str, ShareKind] = {}
        self._revealed: dict[tuple[str, ShareKind], dict[str, RevealedShare]] = {}
        self._reveal_seen: set[str] = set()
        self._touched: set[str] = set()
        self._digest = b""
        self._votes = SurvivorVotes()
        self._recovered: dict[str, bytes] = {}
        self._result: UIntVector | None = None

    # ----------------------------------------------------------------- public API

    def start(self, words: UIntVector, *, copy: bool = True) -> list[Outgoing]:
        """Begin the round with this peer's quantised input; returns the key advertisements.

        With ``copy=False`` the peer masks ``words`` in place (it must be a writable,
        contiguous array the caller no longer needs), saving one vector of memory.
        """
        dtype = ring_dtype(self.config.ring_bits)
        if words.dtype != dtype or words.shape != (self.config.dimension,):
            raise DataError(
                f"the input must be a {dtype.__name__} vector of length {self.config.dimension}, "
                f"got {words.dtype} of shape {words.shape}"
            )
        bits = self.config.input_bits
        if bits is not None and words.size and int(words.max()) >> bits:
            raise DataError(
                f"an input word exceeds {bits} bits, so the sum could wrap the ring silently"
            )
        self._move(Event.START)
        if copy or not (words.flags.writeable and words.flags.c_contiguous):
            words = cast(UIntVector, np.array(words, dtype=dtype, copy=True))
        self._input = words
        advert = AdvertiseKeys(
            self.config.consortium,
            self.config.round,
            self._channel.public,
            self._mask.public,
            commitment(self._seed, self.config.consortium, self.config.round, self.me),
            bytes(SIGNATURE_BYTES),
        )
        signature = self._signer.sign(_advert_signed_bytes(self.config, self.me, advert))
        advert = AdvertiseKeys(
            advert.consortium,
            advert.round,
            advert.channel_public,
            advert.mask_public,
            advert.seed_commitment,
            signature,
        )
        self._adverts[self.me] = advert
        # Everyone gets the keys, not just neighbours: unmasking checks rebuilt secrets
        # against them and needs survivors' mask keys to remove dropped peers' pair masks.
        out = [Outgoing(peer, advert) for peer in self.plan.peers if peer != self.me]
        return out + self._advance()

    def receive_bytes(self, sender: str, data: bytes) -> list[Outgoing]:
        """Decode and handle ``data`` from ``sender``; see ``receive``."""
        try:
            message = decode(data)
        except RemoteProtocolError as exc:
            self._reject(sender, exc.reason, str(exc), exclude=True)
            raise RemoteProtocolError(exc.reason, str(exc), sender) from None
        return self.receive(sender, message)

    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        """Handle ``message`` from the authenticated ``sender``; returns what to send.

        Raises ``RemoteProtocolError`` (sender and reason code attached) for a message from
        outside the cohort or the neighbourhood, of another consortium or round (replay),
        a duplicate, one this stage does not accept, or one that fails verification.
        """
        kind = kind_of(message)
        if sender not in self._identities or sender == self.me:
            self._refuse(sender, ReasonCode.UNKNOWN_PEER, f"{sender!r} is not another cohort peer")
        if message.consortium != self.config.consortium:
            self._refuse(sender, ReasonCode.WRONG_CONSORTIUM, "message of another consortium")
        if message.round != self.config.round:
            self._refuse(sender, ReasonCode.WRONG_ROUND, f"message of round {message.round}")
        # An excluded peer stays out of every share and mask relation, but if its vector
        # made it into the sum its mask set is still needed to unmask.
        if sender in self.excluded and kind is not MessageKind.INPUT_COMMIT:
            self._refuse(sender, ReasonCode.PROTOCOL_VIOLATION, f"{sender!r} is excluded")
        # A second survivor signature is checked, not refused as a duplicate: one on another
        # set proves its signer equivocated.
        if sender in self._inbox[kind] and kind is not MessageKind.SURVIVOR_SIGNATURE:
            self._refuse(sender, ReasonCode.DUPLICATE, f"second {kind.name} from {sender!r}")
        if kind not in ACCEPTS[self.stage]:
            self._refuse(
                sender,
                ReasonCode.UNEXPECTED_STAGE,
                f"{kind.name} arrived in stage {self.stage.value}",
            )
        local = kind in (MessageKind.SHARE_KEYS, MessageKind.SHARE_RECEIPT)
        if local and sender not in self.neighbours:
            self._refuse(sender, ReasonCode.PROTOCOL_VIOLATION, f"{sender!r} is no neighbour")
        self._check_on_arrival(sender, message)
        self._inbox[kind][sender] = message
        if isinstance(message, AdvertiseKeys):
            self._adverts[sender] = message
        return self._advance()

    def is_early(self, sender: str, data: bytes) -> bool:
        """Whether ``data`` arrived before something it depends on and may be taken later.

        Messages travel on separate streams, so a fast peer's shares can overtake its own key
        advertisement, or its commitment can reach us before we left ``ADVERTISE``. A driver
        holds such a message back and offers it again after the next change, instead of
        having it refused; anything malformed or not early is for ``receive_bytes`` to judge.
        """
        try:
            message = decode(data)
        except RemoteProtocolError:
            return False
        if message.round != self.config.round or message.consortium != self.config.consortium:
            return False
        if isinstance(message, ShareKeys) and sender not in self._adverts:
            return self.stage in (Stage.ADVERTISE, Stage.SHARE_KEYS)
        kind = kind_of(message)
        if kind in ACCEPTS[self.stage] or self.stage in TERMINAL:
            return False
        later = PROGRESS[PROGRESS.index(self.stage) + 1 :]
        return any(kind in ACCEPTS[stage] for stage in later)

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
                signed = self._votes.signers(self._digest, self.survivors)
                others = self._votes.dissenters(self._digest, self.survivors)
                self._abort(
                    ReasonCode.TIMEOUT,
                    f"only {len(signed)} survivors signed this survivor set before the deadline, "
                    f"the quorum is {self.plan.quorum}"
                    + (f" ({others} signed another set)" if others else "")
                    + "; nothing was revealed",
                )
            case Stage.UNMASK:
                missing = sorted(d for d in self._needed if d not in self._recovered)
                self._abort(
                    ReasonCode.TIMEOUT,
                    f"too few valid shares arrived to unmask the secrets of {missing}",
                )
            case _:
                pass
        return []

    def receive_sum(self, total: UIntVector, contributors: Iterable[str]) -> list[Outgoing]:
        """The masked sum of ``contributors``' vectors: check it and sign the survivor set.

        Shares are revealed later, once, when a quorum of survivors signed the same set.

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
        self._absorb_commits()
        problem = self._check_survivors(survivors)
        if problem is not None:
            self._abort(*problem)
            return []
        self.survivors = survivors
        self.dropped = frozenset().union(*(self._commits[v] for v in survivors)) - survivors
        self._needed = {v: ShareKind.SELF_SEED for v in survivors}
        self._needed |= {d: ShareKind.PAIR_SECRET for d in self.dropped}
        digest = self._digest = survivors_digest(self.config, survivors)
        # The masked vector's buffer is free once summed: reuse it for the total, so a peer
        # never holds more than its input, one working vector and the incoming sum.
        buffer = self.masked_vector
        if buffer is None:
            buffer = cast(UIntVector, np.empty(self.config.dimension, dtype=dtype))
        np.copyto(buffer, total)
        self._total, self.masked_vector = buffer, None
        self._move(Event.SUM_RECEIVED)
        signature = self._signer.sign(survivor_set_signed_bytes(self.config, digest))
        self._votes.add(self.me, digest)
        vote = SurvivorSignature(self.config.consortium, self.config.round, digest, signature)
        out = [Outgoing(peer, vote) for peer in self.plan.peers if peer != self.me]
        return out + self._advance()

    def _reveal(self) -> list[Outgoing]:
        """Reveal this peer's shares for the survivor set a quorum signed (once)."""
        survivors, digest = self.survivors, self._digest
        reveal_plan = plan_reveal(self._held, survivors, self.dropped)
        shares = []
        for dealer, kind in sorted(reveal_plan.items()):
            held = self._held[dealer]
            if kind is ShareKind.SELF_SEED:
                share, signature = held.seed_share, held.seed_signature
            else:
                share, signature = held.mask_share, held.mask_signature
            shares.append(RevealedShare(dealer, kind, share, signature))
        reveal = Reveal(self.config.consortium, self.config.round, digest, tuple(shares))
        self._move(Event.QUORUM_SIGNED)
        self._use_reveal(self.me, reveal)
        return [Outgoing(peer, reveal) for peer in sorted(survivors - {self.me})]

    def _consistency(self) -> tuple[bool, list[Outgoing]]:
        """Reveal once a quorum of survivors signed our set (True); abort once none can."""
        live = self.survivors - self.excluded.keys()
        if len(self._votes.signers(self._digest, live)) >= self.plan.quorum:
            return True, self._reveal()
        others = self._votes.dissenters(self._digest, self.survivors)
        if len(live - set(others)) < self.plan.quorum:
            excluded = sorted(self.survivors & self.excluded.keys())
            self._abort(
                ReasonCode.PROTOCOL_VIOLATION,
                f"fewer than the quorum of {self.plan.quorum} survivors can sign this survivor "
                "set ("
                + "; ".join(
                    part
                    for part in (
                        f"{others} signed another survivor set" if others else "",
                        f"{excluded} are excluded" if excluded else "",
                    )
                    if part
                )
                + "); nothing was revealed",
            )
        return False, []

    def result(self) -> UIntVector:
        """The unmasked sum of the survivors' inputs (mod 2^k), computed once on demand."""
        if self.stage is not Stage.DONE or self._total is None:
            raise LocalProtocolError(f"no result in stage {self.stage.value}")
        if self._result is None:
            out = self._total
            self._total = None
            c, r = self.config.consortium, self.config.round
            removals = [
                (self_mask_key(self._recovered[v], c, r, v), -1) for v in sorted(self.survivors)
            ]
            for v in sorted(self.survivors):
                for d in sorted(self._commits[v] & self.dropped):
                    secret = agree(self._recovered[d], self._adverts[v].mask_public)
                    removals.append((pair_mask_key(secret, c, r, v, d), -self.plan.sign(v, d)))
            self._expander.apply_many(out, removals)
            self._result = out
        return self._result

    def held_bytes(self) -> int:
        """Bytes of vectors this peer holds now (input, masked vector, sum, result)."""
        arrays = {id(a): a for a in (self._input, self.masked_vector, self._total, self._result)}
        return sum(a.nbytes for a in arrays.values() if a is not None)

    @property
    def done(self) -> bool:
        """Whether the round ended (DONE or ABORTED)."""
        return self.stage in TERMINAL

    # ----------------------------------------------------------------- helpers

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

    def _refuse(self, peer: str, reason: ReasonCode, detail: str, *, exclude: bool = False) -> None:
        self._reject(peer, reason, detail, exclude=exclude)
        raise RemoteProtocolError(reason, f"secagg: {detail}", peer)

    def _check_on_arrival(self, sender: str, message: Message) -> None:
        match message:
            case AdvertiseKeys():
                signed = _advert_signed_bytes(self.config, sender, message)
                if not verify_signature(self._identities[sender], signed, message.signature):
                    self._refuse(
                        sender,
                        ReasonCode.BAD_SIGNATURE,
                        "key advertisement signature is invalid",
                        exclude=True,
                    )
            case ShareKeys():
                if sender not in self._adverts:
                    self._refuse(sender, ReasonCode.OUT_OF_ORDER, "shares before key advertisement")
                if sender not in self._shared_with and self.stage is Stage.SHARE_KEYS:
                    self._refuse(
                        sender, ReasonCode.PROTOCOL_VIOLATION, "shares from a peer we left out"
                    )
            case ShareReceipt():
                if not set(message.received_from) <= self.plan.neighbours[sender]:
                    self._refuse(
                        sender,
                        ReasonCode.PROTOCOL_VIOLATION,
                        "receipt names non-neighbours",
                        exclude=True,
                    )
            case InputCommit():
                if not set(message.mask_set) <= self.plan.neighbours[sender]:
                    self._refuse(
                        sender,
                        ReasonCode.PROTOCOL_VIOLATION,
                        "mask set names non-neighbours",
                        exclude=True,
                    )
            case SurvivorSignature():
                signed = survivor_set_signed_bytes(self.config, message.survivors_digest)
                if not verify_signature(self._identities[sender], signed, message.signature):
                    self._refuse(
                        sender,
                        ReasonCode.BAD_SIGNATURE,
                        "survivor-set signature is invalid",
                        exclude=True,
                    )
                if not self._votes.add(sender, message.survivors_digest):
                    self._refuse(
                        sender,
                        ReasonCode.PROTOCOL_VIOLATION,
                        "signed two different survivor sets in one round (equivocation)",
                        exclude=True,
                    )
                if sender in self._inbox[MessageKind.SURVIVOR_SIGNATURE]:
                    self._refuse(sender, ReasonCode.DUPLICATE, "second survivor signature")
            case Reveal():
                if self.survivors and message.survivors_digest != self._digest:
                    self._refuse(
                        sender,
                        ReasonCode.PROTOCOL_VIOLATION,
                        "reveal for another survivor set",
                        exclude=True,
                    )
                for share in message.shares:
                    if share.dealer not in self._identities or sender not in self.plan.holders(
                        share.dealer
                    ):
                        self._refuse(
                            sender,
                            ReasonCode.PROTOCOL_VIOLATION,
                            f"reveal of a share of {share.dealer!r} it cannot hold",
                            exclude=True,
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
                self._absorb_reveals()
                if self.stage is Stage.UNMASK and self._try_recover():
                    self._move(Event.SECRETS_RECOVERED)
                return out
            else:
                return out

    def _finish_advertise(self) -> list[Outgoing]:
        live = frozenset(p for p in self._adverts if p in self.neighbours)
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
        c, r = self.config.consortium, self.config.round
        xs = {peer: self.plan.x(peer) for peer in holders}
        seed_shares = shamir.split(self._seed, self.plan.threshold, list(xs.values()), self._random)
        mask_shares = shamir.split(
            self._mask.secret, self.plan.threshold, list(xs.values()), self._random
        )
        out = []
        for peer in sorted(holders):
            seed_share, mask_share = seed_shares[xs[peer]], mask_shares[xs[peer]]
            held = _Held(
                seed_share,
                mask_share,
                self._signer.sign(
                    share_signed_bytes(self.config, self.me, peer, ShareKind.SELF_SEED, seed_share)
                ),
                self._signer.sign(
                    share_signed_bytes(
                        self.config, self.me, peer, ShareKind.PAIR_SECRET, mask_share
                    )
                ),
            )
            if peer == self.me:
                self._held[self.me] = held
                continue
            key = share_encryption_key(
                agree(self._channel.secret, self._adverts[peer].channel_public), c, r, self.me, peer
            )
            payload = seed_share + mask_share + held.seed_signature + held.mask_signature
            sealed = bytes(SecretBox(key).encrypt(payload, self._random(SecretBox.NONCE_SIZE)))
            out.append(Outgoing(peer, ShareKeys(c, r, sealed)))
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
        return out

    def _open_shares(self, dealer: str, message: ShareKeys) -> _Held | None:
        c, r = self.config.consortium, self.config.round
        key = share_encryption_key(
            agree(self._channel.secret, self._adverts[dealer].channel_public), c, r, dealer, self.me
        )
        try:
            payload = SecretBox(key).decrypt(message.sealed)
        except CryptoError:
            return None
        n = shamir.SHARE_BYTES
        held = _Held(
            payload[:n], payload[n : 2 * n], payload[2 * n : 2 * n + 64], payload[2 * n + 64 :]
        )
        public = self._identities[dealer]
        for kind, share, signature in (
            (ShareKind.SELF_SEED, held.seed_share, held.seed_signature),
            (ShareKind.PAIR_SECRET, held.mask_share, held.mask_signature),
        ):
            signed = share_signed_bytes(self.config, dealer, self.me, kind, share)
            if not verify_signature(public, signed, signature):
                return None
            try:
                shamir.share_value(share)
            except DataError:
                return None
        return held

    def _finish_shares(self) -> list[Outgoing]:
        for dealer, message in self._inbox[MessageKind.SHARE_KEYS].items():
            if dealer in self.excluded or not isinstance(message, ShareKeys):
                continue
            held = self._open_shares(dealer, message)
            if held is None:
                self._reject(
                    dealer, ReasonCode.BAD_SHARE, "sealed shares failed verification", exclude=True
                )
            else:
                self._held[dealer] = held
        self._accepted = frozenset(self._held) - {self.me}
        self._move(Event.SHARES_COLLECTED)
        receipt = ShareReceipt(
            self.config.consortium, self.config.round, tuple(sorted(self._accepted))
        )
        return [Outgoing(peer, receipt) for peer in sorted(self._accepted)]

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
        assert self._input is not None
        vector, self._input = self._input, None
        c, r = self.config.consortium, self.config.round
        pair_keys = [
            (
                pair_mask_key(
                    agree(self._mask.secret, self._adverts[peer].mask_public), c, r, self.me, peer
                ),
                self.plan.sign(self.me, peer),
            )
            for peer in sorted(self.mask_set)
        ]
        mask_vector(vector, self_mask_key(self._seed, c, r, self.me), pair_keys, self._expander)
        self.masked_vector = vector
        self._commits[self.me] = self.mask_set
        self._move(Event.RECEIPTS_COLLECTED)
        commit = InputCommit(c, r, tuple(sorted(self.mask_set)))
        # Excluded peers get it too: if their vectors reach the sum they must unmask it.
        return [Outgoing(peer, commit) for peer in self.plan.peers if peer != self.me]

    def _absorb_commits(self) -> None:
        for peer, message in self._inbox[MessageKind.INPUT_COMMIT].items():
            if isinstance(message, InputCommit):
                self._commits[peer] = frozenset(message.mask_set)

    def _check_survivors(self, survivors: frozenset[str]) -> tuple[ReasonCode, str] | None:
        if not survivors <= set(self.plan.peers):
            return ReasonCode.UNKNOWN_PEER, "the masked sum names contributors outside the cohort"
        if self.me not in survivors:
            return ReasonCode.DROPPED, "this peer's masked input is not in the sum"
        if len(survivors) < self.plan.min_survivors:
            return (
                ReasonCode.DROPPED,
                f"only {len(survivors)} peers contributed, at least {self.plan.min_survivors} "
                f"are needed (min_contributors {self.plan.min_contributors} against "
                f"{self.plan.collusion} colluding member(s), consistency quorum "
                f"{self.plan.quorum}); nothing was revealed",
            )
        unknown = sorted(v for v in survivors if v not in self._commits)
        if unknown:
            return ReasonCode.PROTOCOL_VIOLATION, f"no input commitment from contributors {unknown}"
        for v in survivors:
            for u in self._commits[v] & survivors:
                if v not in self._commits[u]:
                    return (
                        ReasonCode.PROTOCOL_VIOLATION,
                        f"contributors {v!r} and {u!r} disagree on their pair mask",
                    )
        groups = _components(survivors, self._commits)
        if groups > 1:
            # Once seeds are revealed, a group of survivors with no pair mask to anyone
            # outside it is unmasked by any partial sum over it (a ring all-reduce forms such
            # partial sums), so its members' inputs would leak.
            return (
                ReasonCode.DROPPED,
                f"the survivors' pair masks fall apart into {groups} groups; nothing was revealed",
            )
        dropped = frozenset().union(*(self._commits[v] for v in survivors)) - survivors
        keyless = sorted((survivors | dropped) - set(self._adverts))
        if keyless:
            return (
                ReasonCode.PROTOCOL_VIOLATION,
                f"the keys of {keyless} never arrived, so their masks cannot be removed",
            )
        for dealer in sorted(survivors | dropped):
            holding = len(self.plan.holders(dealer) & survivors)
            if holding < self.plan.threshold:
                return (
                    ReasonCode.DROPPED,
                    f"only {holding} surviving holders of {dealer!r}'s shares, threshold is "
                    f"{self.plan.threshold}; nothing was revealed",
                )
        return None

    def _absorb_reveals(self) -> None:
        inbox = self._inbox[MessageKind.REVEAL]
        for sender in inbox.keys() - self._reveal_seen:
            message = inbox[sender]
            self._reveal_seen.add(sender)
            if isinstance(message, Reveal):
                self._use_reveal(sender, message)

    def _use_reveal(self, sender: str, message: Reveal) -> None:
        if sender not in self.survivors:
            self._reject(
                sender, ReasonCode.PROTOCOL_VIOLATION, "reveal from a non-survivor", exclude=False
            )
            return
        if message.survivors_digest != self._digest:
            self._reject(
                sender,
                ReasonCode.PROTOCOL_VIOLATION,
                "reveal for another survivor set",
                exclude=True,
            )
            return
        for share in message.shares:
            if self._needed.get(share.dealer) is not share.kind:
                self._reject(
                    sender,
                    ReasonCode.PROTOCOL_VIOLATION,
                    f"revealed a {share.kind.name} share of {share.dealer!r} that was not due",
                    exclude=True,
                )
                return
        for share in message.shares:
            self._revealed.setdefault((share.dealer, share.kind), {})[sender] = share
            self._touched.add(share.dealer)

    def _try_recover(self) -> bool:
        """Rebuild every needed secret that has t shares; True when all are recovered.

        Only dealers with new shares since the last call are looked at, so a peer does
        O(shares) work over the whole unmask stage, not O(secrets) per message.
        """
        touched, self._touched = self._touched, set()
        for dealer in sorted(touched):
            kind = self._needed[dealer]
            while dealer not in self._recovered:
                shares = {
                    h: s
                    for h, s in self._revealed.get((dealer, kind), {}).items()
                    if h not in self.excluded
                }
                if len(shares) < self.plan.threshold:
                    break
                chosen = sorted(shares, key=self.plan.x)[: self.plan.threshold]
                secret = self._combine(dealer, kind, {h: shares[h] for h in chosen})
                if secret is not None:
                    self._recovered[dealer] = secret
                elif not self._blame(dealer, kind, shares):
                    return False
        return len(self._recovered) == len(self._needed)

    def _combine(
        self, dealer: str, kind: ShareKind, shares: Mapping[str, RevealedShare]
    ) -> bytes | None:
        try:
            secret = shamir.combine({self.plan.x(h): s.share for h, s in shares.items()})
        except DataError:
            return None
        advert = self._adverts[dealer]
        c, r = self.config.consortium, self.config.round
        if kind is ShareKind.SELF_SEED:
            ok = commitment(secret, c, r, dealer) == advert.seed_commitment
        else:
            ok = AgreementKeyPair.from_secret(secret).public == advert.mask_public
        return secret if ok else None

    def _blame(self, dealer: str, kind: ShareKind, shares: Mapping[str, RevealedShare]) -> bool:
        """A rebuilt secret failed its check: name the liars by the dealer's signatures.

        Returns True if some revealer was excluded (try again without it); otherwise the
        dealer itself dealt bad shares, which is excluded, and the round aborts.
        """
        public = self._identities[dealer]
        liars = [
            h
            for h, s in shares.items()
            if not verify_signature(
                public, share_signed_bytes(self.config, dealer, h, kind, s.share), s.signature
            )
        ]
        for holder in liars:
            self._reject(
                holder, ReasonCode.BAD_SHARE, f"revealed a forged share of {dealer!r}", exclude=True
            )
        if liars:
            return True
        # Every share carries the dealer's signature, so the dealer itself dealt shares
        # that do not rebuild its committed secret.
        self._reject(dealer, ReasonCode.BAD_SHARE, "dealt inconsistent shares", exclude=True)
        self._abort(ReasonCode.BAD_SHARE, f"{dealer!r} dealt shares that do not rebuild its secret")
        return False

"""The exchange before the sum: signed key adverts, dealt shares, the double-masked input.

Theory of operation: for one round a peer holds ``RoundKeys`` — two fresh X25519 key pairs
(``channel`` seals the shares it deals, ``mask`` agrees pair-mask secrets) and the self-mask
seed b. ``KeyExchange.advertise`` signs both public keys and a commitment to b with the peer's
Ed25519 identity. ``deal`` Shamir-shares b and the mask secret among the holders (threshold t),
signs every share (binding round, dealer, holder and the secret's kind, so a holder cannot
pass a share off as another's at unmasking) and seals each holder's pair with a SecretBox
key derived from the channel agreement for that direction; ``open`` is the holder's side
and keeps nothing that fails the seal, a signature or the share format. ``mask`` adds PRG(b)
and ±PRG(s_uv) for every pair in the mask set, in place. ``SecAggPeer`` decides when.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from p2pfed.errors import DataError
from p2pfed.identity.keys import Signer, verify_signature
from p2pfed.secagg import shamir
from p2pfed.secagg.messages import AdvertiseKeys, ShareKeys, ShareKind
from p2pfed.secagg.params import CohortPlan, SecAggConfig
from p2pfed.secagg.primitives import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    AgreementKeyPair,
    MaskExpander,
    RandomBytes,
    UIntVector,
    agree,
    commitment,
    domain,
    mask_vector,
    pair_mask_key,
    self_mask_key,
    share_encryption_key,
)


@dataclass(frozen=True, slots=True, repr=False)
class RoundKeys:
    """One peer's secrets for one round; none of them appears in repr."""

    channel: AgreementKeyPair
    mask: AgreementKeyPair
    seed: bytes

    @staticmethod
    def generate(random_bytes: RandomBytes) -> RoundKeys:
        """Fresh keys: the channel pair, the mask pair, then the seed, in that order."""
        channel = AgreementKeyPair.generate(random_bytes)
        mask = AgreementKeyPair.generate(random_bytes)
        return RoundKeys(channel, mask, random_bytes(KEY_BYTES))

    def __repr__(self) -> str:
        return f"RoundKeys(mask_public={self.mask.public.hex()[:16]}…)"


@dataclass(frozen=True, slots=True)
class Held:
    """The two shares a dealer gave one holder, with the dealer's signatures."""

    seed_share: bytes
    mask_share: bytes
    seed_signature: bytes
    mask_signature: bytes

    def of(self, kind: ShareKind) -> tuple[bytes, bytes]:
        """The share of ``kind`` and the dealer's signature on it."""
        if kind is ShareKind.SELF_SEED:
            return self.seed_share, self.seed_signature
        return self.mask_share, self.mask_signature


def advert_signed_bytes(config: SecAggConfig, peer: str, advert: AdvertiseKeys) -> bytes:
    """What a peer signs in its key advertisement: both public keys and the seed commitment."""
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


class KeyExchange:
    """One peer's side of the exchange before the sum, in one round.

    Holds the peer's ``RoundKeys``, the advertisements it took (``adverts``, its own
    included) and the shares it holds (``held``: dealer → ``Held``, its own included).
    """

    def __init__(
        self,
        config: SecAggConfig,
        plan: CohortPlan,
        me: str,
        signer: Signer,
        identities: Mapping[str, bytes],
        random_bytes: RandomBytes,
    ) -> None:
        self.config = config
        self.plan = plan
        self.me = me
        self._signer = signer
        self._identities = identities
        self._random = random_bytes
        self.keys = RoundKeys.generate(random_bytes)
        self.adverts: dict[str, AdvertiseKeys] = {}
        self.held: dict[str, Held] = {}

    def advertise(self) -> AdvertiseKeys:
        """This peer's signed key advertisement (kept in ``adverts``)."""
        config, keys = self.config, self.keys
        c, r = config.consortium, config.round
        unsigned = AdvertiseKeys(
            c,
            r,
            keys.channel.public,
            keys.mask.public,
            commitment(keys.seed, c, r, self.me),
            bytes(SIGNATURE_BYTES),
        )
        signature = self._signer.sign(advert_signed_bytes(config, self.me, unsigned))
        advert = AdvertiseKeys(
            c, r, unsigned.channel_public, unsigned.mask_public, unsigned.seed_commitment, signature
        )
        self.adverts[self.me] = advert
        return advert

    def deal(self, holders: Iterable[str]) -> list[tuple[str, ShareKeys]]:
        """Share b and the mask secret among ``holders`` (this peer among them).

        Keeps this peer's own shares in ``held``; returns one sealed ``ShareKeys`` per other
        holder.
        """
        config, plan, me, sign = self.config, self.plan, self.me, self._signer.sign
        c, r = config.consortium, config.round
        xs = {peer: plan.x(peer) for peer in holders}
        seed_shares, mask_shares = shamir.split_many(
            [self.keys.seed, self.keys.mask.secret], plan.threshold, list(xs.values()), self._random
        )
        sealed: list[tuple[str, ShareKeys]] = []
        for peer in sorted(xs):
            seed_share, mask_share = seed_shares[xs[peer]], mask_shares[xs[peer]]
            held = Held(
                seed_share,
                mask_share,
                sign(share_signed_bytes(config, me, peer, ShareKind.SELF_SEED, seed_share)),
                sign(share_signed_bytes(config, me, peer, ShareKind.PAIR_SECRET, mask_share)),
            )
            if peer == me:
                self.held[me] = held
                continue
            key = share_encryption_key(
                agree(self.keys.channel.secret, self.adverts[peer].channel_public), c, r, me, peer
            )
            payload = seed_share + mask_share + held.seed_signature + held.mask_signature
            box = bytes(SecretBox(key).encrypt(payload, self._random(SecretBox.NONCE_SIZE)))
            sealed.append((peer, ShareKeys(c, r, box)))
        return sealed

    def open(self, dealer: str, message: ShareKeys) -> bool:
        """Keep the shares ``dealer`` sealed to this peer; False (none kept) if any is bad."""
        c, r, me = self.config.consortium, self.config.round, self.me
        channel = agree(self.keys.channel.secret, self.adverts[dealer].channel_public)
        key = share_encryption_key(channel, c, r, dealer, me)
        try:
            payload = SecretBox(key).decrypt(message.sealed)
        except CryptoError:
            return False
        n = shamir.SHARE_BYTES
        held = Held(
            payload[:n], payload[n : 2 * n], payload[2 * n : 2 * n + 64], payload[2 * n + 64 :]
        )
        for kind in (ShareKind.SELF_SEED, ShareKind.PAIR_SECRET):
            share, signature = held.of(kind)
            signed = share_signed_bytes(self.config, dealer, me, kind, share)
            if not verify_signature(self._identities[dealer], signed, signature):
                return False
            try:
                shamir.share_value(share)
            except DataError:
                return False
        self.held[dealer] = held
        return True

    def mask(self, vector: UIntVector, mask_set: Iterable[str], expander: MaskExpander) -> None:
        """Mask ``vector`` in place: x + PRG(b) + Σ ±PRG(s_uv) over ``mask_set``."""
        c, r, me, secret = self.config.consortium, self.config.round, self.me, self.keys.mask.secret
        pair_keys = [
            (
                pair_mask_key(agree(secret, self.adverts[peer].mask_public), c, r, me, peer),
                self.plan.sign(me, peer),
            )
            for peer in sorted(mask_set)
        ]
        mask_vector(vector, self_mask_key(self.keys.seed, c, r, me), pair_keys, expander)

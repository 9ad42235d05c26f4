"""Ed25519 signatures over cohorts, keyed by peer ID.

Theory of operation: a coordinator signs each cohort it fixes with its Ed25519 identity key;
members check the signature against the coordinator's public key from the roster before
adopting the cohort, so a cohort relayed by anyone else cannot be forged. The transport
already authenticates whoever sends it; the signature makes the decision itself verifiable
(and auditable) apart from the channel it came over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from p2pfed.errors import ConfigError


class CohortSigner(Protocol):
    """Signs cohorts as this peer and checks other peers' signatures."""

    def sign(self, data: bytes) -> bytes:
        """This peer's signature over ``data``."""
        ...

    def verify(self, peer: str, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``peer``'s signature over ``data``."""
        ...


class Ed25519CohortSigner:
    """Signs as this peer (32-byte seed) and verifies peers by their 32-byte public keys."""

    def __init__(self, seed: bytes, public_keys: Mapping[str, bytes]) -> None:
        if len(seed) != 32:
            raise ConfigError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        for peer, key in public_keys.items():
            if len(key) != 32:
                raise ConfigError(f"public key of {peer} is {len(key)} bytes, not 32")
        self._key = SigningKey(seed)
        self._public = {peer: VerifyKey(key) for peer, key in public_keys.items()}

    @property
    def public_key(self) -> bytes:
        """This peer's 32-byte Ed25519 public key."""
        return bytes(self._key.verify_key)

    def sign(self, data: bytes) -> bytes:
        """This peer's 64-byte signature over ``data``."""
        return bytes(self._key.sign(data).signature)

    def verify(self, peer: str, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``peer``'s valid signature over ``data``."""
        key = self._public.get(peer)
        if key is None:
            return False
        try:
            key.verify(data, signature)
        except (BadSignatureError, ValueError):
            return False
        return True

"""The node's secret audit salt, and how peer IDs appear in audit bodies.

Theory of operation: peer IDs in bodies (cohort, exclusions, roster changes) are never
stored raw but as HMAC-SHA256(salt, peer ID) under the node's own secret salt
(``audit.salt``: 32 random bytes, hex, mode 0600, beside the identity key). The node, and
whoever it gives the salt, can re-identify peers; a leaked log, even with the roster and
config beside it, does not reveal who took part.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError

SALT_FILE = "audit.salt"
"""The node's secret audit salt: beside its identity key, mode 0600, never in the config."""
MIN_SALT_BYTES = 16


def hash_peer_id(salt: bytes, peer_id: str) -> str:
    """HMAC-SHA256(salt, peer ID) in hex: how peer IDs appear in audit bodies."""
    return hmac.new(salt, peer_id.encode("utf-8"), hashlib.sha256).hexdigest()


def create_salt_file(path: str | os.PathLike[str]) -> bytes:
    """Write a new secret salt to ``path`` (hex, mode 0600); never replaces an existing one."""
    salt = secrets.token_bytes(32)
    atomic_write(Path(path), salt.hex().encode() + b"\n", 0o600, overwrite=False)
    return salt


def read_salt_file(path: str | os.PathLike[str]) -> bytes:
    """The salt in ``path``; ``ConfigError`` if others may read it or it is malformed."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit salt {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(
            f"the audit salt {path} has permissions {mode:o}; it must be private (chmod 600)"
        )
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        salt = b""
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError(f"the audit salt {path} must hold at least {MIN_SALT_BYTES} hex bytes")
    return salt

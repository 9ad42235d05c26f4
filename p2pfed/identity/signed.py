"""What the roster and the study protocol share: a body signed m-of-n by admins.

Theory of operation: a signed document is ``{"body": {...}, "signatures": [...]}``. Its
body is hashed and signed as canonical JSON (``p2pfed.canonical``) after a domain string
that names the kind of document, so a signature on one kind never counts for another.
``Signed`` gives a frozen dataclass with a ``body()`` and a ``signatures`` field the rest:
hash, signing message, signing, counting valid signers, the file's JSON, and reading it
within a size cap. ``roster_trust.check_signed`` applies the m-of-n rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from p2pfed.canonical import canonical_json
from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError
from p2pfed.identity.keys import Signer
from p2pfed.identity.roster_fields import (
    RosterSignature,
    bad_signers,
    json_object,
    malformed,
    parse_signatures,
    signature_of,
    valid_signers,
)


class Signed:
    """Mixin of a frozen dataclass with ``body()`` and a ``signatures`` field."""

    __slots__ = ()
    DOMAIN: ClassVar[bytes]
    signatures: tuple[RosterSignature, ...]

    def body(self) -> dict[str, Any]:
        """The signed part, as a JSON-ready dict."""
        raise NotImplementedError

    def canonical_body(self) -> bytes:
        """The body as canonical JSON: sorted keys, no whitespace, ASCII only."""
        return canonical_json(self.body())

    def signing_message(self) -> bytes:
        """The exact bytes admins sign (domain-separated canonical body)."""
        return self.DOMAIN + self.canonical_body()

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical body; identifies this document's content."""
        return hashlib.sha256(self.canonical_body()).hexdigest()

    def to_json(self) -> str:
        """The whole document (body and signatures), indented for people to read."""
        document = {"body": self.body(), "signatures": [s.to_dict() for s in self.signatures]}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write the document atomically (temp file, fsync, rename), mode 0644."""
        atomic_write(Path(path), self.to_json().encode(), 0o644, overwrite=overwrite)

    def sign(self, identity: Signer, what: str) -> Self:
        """This document with ``identity``'s signature appended (``what`` names it)."""
        sig = signature_of(identity, self.signing_message(), self.signatures, what)
        return dataclasses.replace(self, signatures=(*self.signatures, sig))  # type: ignore[type-var]

    def valid_signers(self, keys: Iterable[bytes]) -> set[bytes]:
        """The distinct keys among ``keys`` with a valid signature on this body."""
        return valid_signers(self.signatures, self.signing_message(), keys)

    def bad_signers(self, keys: Iterable[bytes]) -> set[bytes]:
        """Keys among ``keys`` that signed *something*, but not this body."""
        return bad_signers(self.signatures, self.signing_message(), keys)


def parse_signed(
    text: str | bytes,
    limit: int,
    source: str,
    keys: set[str],
    form: str,
    optional: frozenset[str] = frozenset(),
) -> tuple[Mapping[str, Any], tuple[RosterSignature, ...]]:
    """(body, signatures) of a signed document whose body has exactly ``keys`` and format.

    Keys in ``optional`` may also appear (fields added later, absent from older documents).
    """
    if len(text) > limit:
        raise malformed(f"{source} is larger than {limit} bytes")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"{source} is not valid JSON: {exc}") from None
    top = json_object(document, source, {"body", "signatures"})
    body = top["body"]
    present = optional & body.keys() if isinstance(body, dict) else frozenset()
    body = json_object(body, f"{source} body", keys | present)
    if body["format"] != form:
        raise malformed(f"{source} has format {body['format']!r}; expected {form}")
    return body, parse_signatures(top["signatures"], source)


def read_signed(path: Path, limit: int, what: str) -> bytes:
    """The first ``limit`` + 1 bytes of the ``what`` at ``path`` (enough to refuse more)."""
    try:
        with path.open("rb") as f:
            return f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None

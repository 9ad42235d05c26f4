"""Crash-safe file writes: write a temporary file, fsync it, rename over, fsync the folder.

Theory of operation: POSIX ``rename`` within one directory is atomic, so a reader sees the
old file or the new one, never a torn mix; the two fsyncs make the new content and the
rename itself survive a power cut. ``sealed`` framing adds a SHA-256 so that corruption is
detected on load instead of being trusted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from p2pfed.errors import IntegrityError

_SEAL_MAGIC = b"P2PFSEAL1\n"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def seal(payload: bytes) -> bytes:
    """Frame ``payload`` with a magic line and its SHA-256 so corruption is detectable."""
    return _SEAL_MAGIC + hashlib.sha256(payload).digest() + payload


def unseal(data: bytes, what: str) -> bytes:
    """The payload of ``seal``; ``IntegrityError`` naming ``what`` if it was altered."""
    head = len(_SEAL_MAGIC)
    if not data.startswith(_SEAL_MAGIC) or len(data) < head + 32:
        raise IntegrityError(f"{what} is not a p2pfed sealed file or is truncated")
    digest, payload = data[head : head + 32], data[head + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise IntegrityError(f"{what} is corrupted (checksum mismatch); it was not loaded")
    return payload

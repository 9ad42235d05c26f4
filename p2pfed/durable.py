"""Crash-safe file writes: write a temporary file, fsync it, rename over, fsync the folder.

Theory of operation: POSIX ``rename`` within one directory is atomic, so a reader sees the
old file or the new one, never a torn mix; the two fsyncs make the new content and the
rename itself survive a power cut. ``sealed`` framing adds a SHA-256 so that corruption is
detected on load instead of being trusted.

Every fsync here and in the privacy ledger goes through ``fsync``, which calls the hook set
by ``set_fsync`` (``os.fsync`` by default): tests inject a recording or failing fsync, or
one that kills the process at a chosen point, to observe durability rather than assume it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from p2pfed.errors import ConfigError, IntegrityError

_SEAL_MAGIC = b"P2PFSEAL1\n"

FsyncHook = Callable[[int], None]
_fsync_hook: FsyncHook = os.fsync


def set_fsync(hook: FsyncHook) -> FsyncHook:
    """Route every durable write's fsync through ``hook``; returns the previous hook."""
    global _fsync_hook
    previous, _fsync_hook = _fsync_hook, hook
    return previous


def fsync(fd: int) -> None:
    """Flush ``fd`` to stable storage through the current hook (``os.fsync`` by default)."""
    _fsync_hook(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            fsync(fd)
        finally:
            os.close(fd)


Data = bytes | bytearray | memoryview | Iterable[bytes | memoryview]
"""What ``atomic_write`` takes: one buffer, or buffers written one after another (streamed)."""


def atomic_write(
    path: str | Path, data: Data, mode: int = 0o600, *, overwrite: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``.

    ``data`` may be a sequence or generator of buffers: a 40 MB model is then written from
    its own memory, never joined into one more copy.

    With ``overwrite=False`` an existing file is kept (even one that appears meanwhile).
    Raises ``ConfigError`` naming the path if it exists (and not ``overwrite``), its folder
    is missing, or the OS refuses the write; the temporary file is always removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not overwrite and path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite it (use --force)")
    tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        raise ConfigError(f"directory {directory} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {tmp}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits; never added any
            parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
            fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:  # link() fails if the target exists, so a file that appeared is kept
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigError(
                    f"{path} already exists; refusing to overwrite it (use --force)"
                ) from None
            os.unlink(tmp)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_json(
    path: str | Path, value: object, mode: int = 0o644, *, indent: int | None = 2
) -> None:
    """Write ``value`` as JSON (sorted keys, a final newline) through ``atomic_write``.

    ``indent=None`` writes one compact line. Raises ``ConfigError`` for a value JSON
    cannot carry exactly (NaN, infinity, objects) and for every ``atomic_write`` failure.
    """
    separators = (",", ":") if indent is None else None
    try:
        text = json.dumps(
            value, indent=indent, separators=separators, sort_keys=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write {path}: the value is not JSON ({exc})") from None
    atomic_write(path, (text + "\n").encode(), mode)


def seal(payload: bytes) -> bytes:
    """Frame ``payload`` with a magic line and its SHA-256 so corruption is detectable."""
    return b"".join(sealed_parts(payload))


def sealed_parts(payload: bytes | memoryview) -> list[bytes | memoryview]:
    """``seal(payload)`` as buffers for ``atomic_write``: the payload itself is not copied."""
    return [_SEAL_MAGIC + hashlib.sha256(payload).digest(), payload]


def unseal(data: bytes, what: str) -> bytes:
    """The payload of ``seal``; ``IntegrityError`` naming ``what`` if it was altered."""
    head = len(_SEAL_MAGIC)
    if not data.startswith(_SEAL_MAGIC) or len(data) < head + 32:
        raise IntegrityError(f"{what} is not a p2pfed sealed file or is truncated")
    digest, payload = data[head : head + 32], data[head + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise IntegrityError(f"{what} is corrupted (checksum mismatch); it was not loaded")
    return payload

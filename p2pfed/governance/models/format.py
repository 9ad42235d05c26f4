r"""What a model version is on disk: its canonical serialisation, hash and manifest.

Theory of operation: a model version is identified by its *model hash*, the SHA-256 of the
canonical serialisation of the shared parameters (``serialize_model``; one function, so
every member computes the same bytes from the same weights)::

    b"P2PFED-MODEL\x00\x01"                   magic and format version (14 bytes)
    u32 count                                number of tensors
    per tensor, in ParameterLayout order:
      u16 len, name (UTF-8)
      u8 len, dtype name (numpy: "float32", "int64", …)
      u8 ndim, ndim × u64 dims
      the elements, little-endian, C order (nbytes = prod(dims) × itemsize)

All integers are little-endian. The hash therefore covers names, shapes, dtypes and values
in a fixed order; personal layers never enter it because they are not in the layout.
A ``ModelManifest`` (``manifest.json``) records the hash, parent hash, round, hashed
participants, DP parameters, metrics, created time and tensor list; ``check_tensors``
refuses tensors whose recomputed hash or layout differs from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError, IntegrityError

MAGIC = b"P2PFED-MODEL\x00\x01"
MANIFEST_FORMAT = "p2pfed-model-manifest/1"
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"})
MAX_MODEL_BYTES = 8 << 30

Tensors = list[tuple[str, NDArray[Any]]]
"""Named arrays in layout order: the form every function here takes and returns."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _header(name: str, array: NDArray[Any]) -> bytes:
    dtype = array.dtype.name
    if dtype not in DTYPES:
        raise DataError(f"tensor {name!r} has dtype {dtype}, not one of {sorted(DTYPES)}")
    raw_name, raw_dtype = name.encode("utf-8"), dtype.encode("ascii")
    if not raw_name or len(raw_name) > 0xFFFF:
        raise DataError(f"tensor name {name!r} must be 1 to 65535 bytes of UTF-8")
    if array.ndim > 0xFF:
        raise DataError(f"tensor {name!r} has {array.ndim} dimensions; at most 255")
    return b"".join(
        [
            struct.pack("<H", len(raw_name)),
            raw_name,
            struct.pack("<B", len(raw_dtype)),
            raw_dtype,
            struct.pack("<B", array.ndim),
            struct.pack(f"<{array.ndim}Q", *array.shape),
        ]
    )


def _le(array: NDArray[Any]) -> memoryview:
    # A view, not a copy, when the array is already little-endian and C-contiguous: hashing
    # a large model then reads its memory once.
    contiguous = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return contiguous.reshape(-1).data.cast("B")


def _chunks(tensors: Sequence[tuple[str, NDArray[Any]]]) -> Iterator[bytes | memoryview]:
    names = [name for name, _ in tensors]
    if len(set(names)) != len(names):
        raise DataError("a tensor name appears twice in the model")
    yield MAGIC + struct.pack("<I", len(tensors))
    for name, array in tensors:
        yield _header(name, array)
        yield _le(array)


def serialize_model(tensors: Sequence[tuple[str, NDArray[Any]]]) -> bytes:
    """The canonical bytes of a model (see the module docstring); the model hash hashes them."""
    return b"".join(_chunks(tensors))


def model_parts(tensors: Sequence[tuple[str, NDArray[Any]]]) -> Iterator[bytes | memoryview]:
    """``serialize_model(tensors)`` as buffers in order, the tensors' memory not copied."""
    return _chunks(tensors)


def model_hash(tensors: Sequence[tuple[str, NDArray[Any]]]) -> str:
    """SHA-256 (hex) of ``serialize_model(tensors)``, computed without building the bytes."""
    digest = hashlib.sha256()
    for chunk in _chunks(tensors):
        digest.update(chunk)
    return digest.hexdigest()


def deserialize_model(data: bytes, what: str = "model") -> Tensors:
    """Parse ``serialize_model`` bytes; ``IntegrityError`` naming ``what`` if malformed."""
    view = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise IntegrityError(f"{what} is truncated at byte {pos}")
        out = view[pos : pos + n]
        pos += n
        return out

    if bytes(take(len(MAGIC))) != MAGIC:
        raise IntegrityError(f"{what} is not a p2pfed model file (bad magic)")
    (count,) = struct.unpack("<I", take(4))
    tensors: Tensors = []
    for _ in range(count):
        (name_len,) = struct.unpack("<H", take(2))
        name = bytes(take(name_len)).decode("utf-8", errors="replace")
        (dtype_len,) = struct.unpack("<B", take(1))
        dtype = bytes(take(dtype_len)).decode("ascii", errors="replace")
        if dtype not in DTYPES:
            raise IntegrityError(f"{what}: tensor {name!r} has unknown dtype {dtype!r}")
        (ndim,) = struct.unpack("<B", take(1))
        shape = struct.unpack(f"<{ndim}Q", take(8 * ndim))
        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = int(np.prod(shape, dtype=np.uint64)) * dt.itemsize
        if nbytes > MAX_MODEL_BYTES:
            raise IntegrityError(f"{what}: tensor {name!r} claims {nbytes} bytes")
        array = np.frombuffer(take(nbytes), dtype=dt).reshape(shape).astype(dtype, copy=True)
        tensors.append((name, array))
    if pos != len(view):
        raise IntegrityError(f"{what} has {len(view) - pos} unexpected trailing bytes")
    return tensors


def tensors_from_flat(
    names: Sequence[str], shapes: Sequence[tuple[int, ...]], vector: NDArray[np.floating]
) -> Tensors:
    """Split a flat shared-parameter vector into named float32 tensors (layout order).

    Pass ``layout.names, layout.shapes`` of a ``p2pfed.training.ParameterLayout``.
    """
    sizes = [int(np.prod(s)) for s in shapes]
    if len(names) != len(shapes):
        raise DataError(f"{len(names)} names for {len(shapes)} shapes")
    if vector.ndim != 1 or vector.shape[0] != sum(sizes):
        raise DataError(f"parameter vector has shape {vector.shape}, expected ({sum(sizes)},)")
    out: Tensors = []
    start = 0
    for name, shape, size in zip(names, shapes, sizes, strict=True):
        out.append((name, np.asarray(vector[start : start + size], np.float32).reshape(shape)))
        start += size
    return out


def flat_from_tensors(tensors: Sequence[tuple[str, NDArray[Any]]]) -> NDArray[np.float32]:
    """The inverse of ``tensors_from_flat``: one float32 vector in the given order."""
    return np.concatenate([a.reshape(-1).astype(np.float32) for _, a in tensors])


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one tensor of a model version."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelManifest:
    """What is known about one model version; written next to its weights."""

    model_hash: str
    parent_hash: str | None
    round: int
    participants: tuple[str, ...]
    """Salted peer-ID hashes (``AuditLog.hash_peer``), never raw peer IDs."""
    dp: Mapping[str, Any]
    metrics: Mapping[str, float]
    created: float
    tensors: tuple[TensorInfo, ...]
    export: Mapping[str, Any] = field(default_factory=dict)
    """Set on exported copies: the file's format and name."""

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.model_hash):
            raise ConfigError(f"model hash {self.model_hash!r} is not 64 lower-case hex digits")
        if self.parent_hash is not None and not _HEX64.fullmatch(self.parent_hash):
            raise ConfigError(f"parent hash {self.parent_hash!r} is not 64 lower-case hex digits")
        if self.round < 0:
            raise ConfigError(f"round {self.round} is negative")

    @property
    def version(self) -> str:
        """The short name people use: the first 16 hex digits of the hash."""
        return self.model_hash[:16]

    @property
    def parameters(self) -> int:
        """Number of scalars in the model."""
        return sum(int(np.prod(t.shape)) for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``manifest.json``)."""
        out: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "model_hash": self.model_hash,
            "parent_hash": self.parent_hash,
            "round": self.round,
            "participants": list(self.participants),
            "dp": dict(self.dp),
            "metrics": dict(self.metrics),
            "created": self.created,
            "tensors": [t.to_dict() for t in self.tensors],
        }
        if self.export:
            out["export"] = dict(self.export)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelManifest:
        """Parse a manifest; ``IntegrityError`` naming ``source`` if it is malformed."""
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {MANIFEST_FORMAT!r}")
            tensors = tuple(
                TensorInfo(str(t["name"]), tuple(int(d) for d in t["shape"]), str(t["dtype"]))
                for t in data["tensors"]
            )
            return cls(
                model_hash=str(data["model_hash"]),
                parent_hash=None if data["parent_hash"] is None else str(data["parent_hash"]),
                round=int(data["round"]),
                participants=tuple(str(p) for p in data["participants"]),
                dp=dict(data["dp"]),
                metrics={str(k): float(v) for k, v in data["metrics"].items()},
                created=float(data["created"]),
                tensors=tensors,
                export=dict(data.get("export", {})),
            )
        except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise IntegrityError(f"manifest {source} is malformed: {detail}") from None

    def check_tensors(self, tensors: Sequence[tuple[str, NDArray[Any]]], what: str) -> None:
        """Refuse ``tensors`` unless names, shapes, dtypes and hash match this manifest."""
        got = tuple(TensorInfo(n, tuple(a.shape), a.dtype.name) for n, a in tensors)
        if got != self.tensors:
            want = {t.name: t for t in self.tensors}
            for info in got:
                if info != want.get(info.name):
                    raise IntegrityError(
                        f"{what}: tensor {info.name!r} {list(info.shape)} {info.dtype} is not "
                        "what its manifest lists"
                    )
            raise IntegrityError(f"{what}: its tensors are not the ones its manifest lists")
        actual = model_hash(tensors)
        if actual != self.model_hash:
            raise IntegrityError(
                f"{what} does not match its manifest: its hash is {actual[:16]}…, "
                f"the manifest says {self.model_hash[:16]}…"
            )


def tensor_infos(tensors: Sequence[tuple[str, NDArray[Any]]]) -> tuple[TensorInfo, ...]:
    """Name, shape and dtype of each tensor, in order."""
    return tuple(TensorInfo(n, tuple(a.shape), a.dtype.name) for n, a in tensors)


def read_manifest(path: Path) -> ModelManifest:
    """The manifest at ``path``; ``IntegrityError`` if it is not a valid one."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError(f"manifest {path} is not valid JSON") from None
    return ModelManifest.from_dict(data, str(path))


def manifest_path_for(model_file: str | os.PathLike[str]) -> Path:
    """Where an exported model's manifest lives: ``<file>.manifest.json``."""
    path = Path(model_file)
    return path.with_name(path.name + ".manifest.json")

r"""Model versions: every round's aggregated model, stored with a manifest and its lineage.

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

``ModelRegistry`` keeps one folder per version, ``<round:08d>-<hash[:16]>/``, holding
``model.bin`` (the canonical serialisation itself, so loading re-derives the hash for
free) and ``manifest.json`` (hash, parent hash, round, hashed participants, DP
parameters, metrics, created time, tensor list). The manifest is written after the
weights, both atomically, so a crash never leaves a manifest without its model. Loading
recomputes the hash and refuses a mismatch (``IntegrityError``).

``export`` writes a portable file (``torch``: ``torch.save`` of a name → tensor dict, read
back with ``weights_only=True``; ``safetensors`` when that package is installed) plus
``<file>.manifest.json``; ``import_model`` reads both and refuses a file whose recomputed
hash differs from its manifest's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.durable import atomic_write, fsync_dir
from p2pfed.errors import ConfigError, DataError, IntegrityError, LocalError

MAGIC = b"P2PFED-MODEL\x00\x01"
MANIFEST_FORMAT = "p2pfed-model-manifest/1"
EXPORT_FORMATS = ("torch", "safetensors")
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"})
MAX_MODEL_BYTES = 8 << 30

Tensors = list[tuple[str, NDArray[Any]]]
"""Named arrays in layout order: the form every function here takes and returns."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


# --- canonical serialisation --------------------------------------------------------------


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


# --- manifests ------------------------------------------------------------------------------


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


def _tensor_infos(tensors: Sequence[tuple[str, NDArray[Any]]]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(n, tuple(a.shape), a.dtype.name) for n, a in tensors)


def _read_manifest(path: Path) -> ModelManifest:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError(f"manifest {path} is not valid JSON") from None
    return ModelManifest.from_dict(data, str(path))


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), 0o644)


# --- the registry --------------------------------------------------------------------------


class ModelRegistry:
    """A folder of model versions, one sub-folder per round's aggregated model."""

    def __init__(self, root: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self._clock = clock

    @classmethod
    def open_existing(cls, root: str | os.PathLike[str]) -> ModelRegistry:
        """A registry that must already exist (for read-only commands)."""
        if not Path(root).is_dir():
            raise ConfigError(f"model registry {root} does not exist (pass --registry DIR)")
        return cls(root)

    def add(
        self,
        round_number: int,
        tensors: Sequence[tuple[str, NDArray[Any]]],
        *,
        parent_hash: str | None,
        participants: Sequence[str] = (),
        dp: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        certificate: Mapping[str, Any] | None = None,
    ) -> ModelManifest:
        """Store a round's aggregated model (and its commit certificate); returns its manifest.

        Adding the same model for the same round again returns the stored manifest (a
        restarted node may redo its last step); a different model for a round that already
        has one raises ``LocalError``.
        """
        digest = model_hash(tensors)
        for existing in self.versions():
            if existing.round == round_number:
                if existing.model_hash == digest:
                    return existing
                raise LocalError(
                    f"round {round_number} already has model {existing.version}; "
                    f"refusing to store a second one ({digest[:16]})"
                )
        manifest = ModelManifest(
            model_hash=digest,
            parent_hash=parent_hash,
            round=round_number,
            participants=tuple(sorted(participants)),
            dp=dict(dp or {}),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            created=self._clock(),
            tensors=_tensor_infos(tensors),
        )
        folder = self.root / f"{round_number:08d}-{digest[:16]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "model.bin", serialize_model(tensors), 0o644)
            _write_json(folder / "manifest.json", manifest.to_dict())
            if certificate is not None:
                _write_json(folder / "certificate.json", dict(certificate))
            fsync_dir(self.root)
        except OSError as exc:
            raise ConfigError(f"cannot store model in {folder}: {exc.strerror}") from None
        return manifest

    def versions(self) -> list[ModelManifest]:
        """Every stored version, oldest round first."""
        if not self.root.is_dir():
            return []
        found = [
            _read_manifest(folder / "manifest.json")
            for folder in sorted(self.root.iterdir())
            if (folder / "manifest.json").is_file()
        ]
        return sorted(found, key=lambda m: (m.round, m.created))

    def resolve(self, version: str) -> ModelManifest:
        """The manifest named by ``version``: ``latest``, a round number, or a hash prefix."""
        versions = self.versions()
        if not versions:
            raise ConfigError(f"model registry {self.root} holds no models")
        if version == "latest":
            return versions[-1]
        if version.isdigit() and len(version) < 9:
            matches = [m for m in versions if m.round == int(version)]
            if not matches:
                raise ConfigError(f"no model for round {version} in {self.root}")
            return matches[-1]
        if not re.fullmatch(r"[0-9a-f]{6,64}", version):
            raise ConfigError(
                f"model version {version!r} is not 'latest', a round number, "
                "or at least 6 hex digits of a model hash"
            )
        matches = [m for m in versions if m.model_hash.startswith(version)]
        if len(matches) != 1:
            what = "no model" if not matches else f"{len(matches)} models"
            raise ConfigError(f"{what} in {self.root} match hash prefix {version!r}")
        return matches[0]

    def _folder(self, manifest: ModelManifest) -> Path:
        return self.root / f"{manifest.round:08d}-{manifest.model_hash[:16]}"

    def load(self, version: str) -> tuple[ModelManifest, Tensors]:
        """A version's manifest and tensors, after checking the hash."""
        manifest = self.resolve(version)
        path = self._folder(manifest) / "model.bin"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"model file {path} is missing: {exc.strerror}") from None
        tensors = deserialize_model(data, str(path))
        manifest.check_tensors(tensors, f"model file {path}")
        return manifest, tensors

    def lineage(self, version: str) -> list[ModelManifest | str]:
        """The version, its parent, grandparent … back to the first model.

        A parent hash the registry does not hold (the node joined later, or it was
        pruned) ends the chain as that bare hash string.
        """
        by_hash = {m.model_hash: m for m in self.versions()}
        chain: list[ModelManifest | str] = []
        current: ModelManifest | None = self.resolve(version)
        seen: set[str] = set()
        while current is not None:
            if current.model_hash in seen:
                raise IntegrityError(f"model lineage loops at {current.version}")
            seen.add(current.model_hash)
            chain.append(current)
            parent = current.parent_hash
            if parent is None:
                break
            current = by_hash.get(parent)
            if current is None:
                chain.append(parent)
        return chain

    def export(
        self, version: str, out: str | os.PathLike[str], fmt: str = "torch"
    ) -> tuple[Path, Path]:
        """Write the version as a ``fmt`` file plus ``<out>.manifest.json``; returns both paths."""
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"export format {fmt!r} is not one of {EXPORT_FORMATS}")
        out = Path(out)
        if not out.parent.is_dir():
            raise ConfigError(f"cannot export to {out}: folder {out.parent} does not exist")
        manifest, tensors = self.load(version)
        if fmt == "safetensors":
            _save_safetensors(tensors, out, manifest.model_hash)
        else:
            _save_torch(tensors, out)
        exported = dataclasses.replace(manifest, export={"format": fmt, "file": out.name})
        manifest_path = manifest_path_for(out)
        _write_json(manifest_path, exported.to_dict())
        certificate = self._folder(manifest) / "certificate.json"
        if certificate.exists():  # travels with the file, so ``model check`` can verify it
            copy = out.with_name(out.name + ".certificate.json")
            atomic_write(copy, certificate.read_bytes(), 0o644)
        return out, manifest_path


def manifest_path_for(model_file: str | os.PathLike[str]) -> Path:
    """Where an exported model's manifest lives: ``<file>.manifest.json``."""
    path = Path(model_file)
    return path.with_name(path.name + ".manifest.json")


def _require_safetensors() -> None:
    if importlib.util.find_spec("safetensors") is None:
        raise ConfigError(
            "the safetensors format needs the optional 'safetensors' package; "
            "install it or use --format torch"
        )


def _save_safetensors(tensors: Tensors, out: Path, digest: str) -> None:
    _require_safetensors()
    from safetensors.numpy import save  # type: ignore[import-not-found,unused-ignore]

    blob = save(
        {n: np.ascontiguousarray(a) for n, a in tensors}, metadata={"p2pfed_model_hash": digest}
    )
    atomic_write(out, bytes(blob), 0o644)


def _save_torch(tensors: Tensors, out: Path) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in tensors}, buffer)
    atomic_write(out, buffer.getvalue(), 0o644)


def import_model(
    path: str | os.PathLike[str], manifest_path: str | os.PathLike[str] | None = None
) -> tuple[ModelManifest, Tensors]:
    """Load an exported model and its manifest; ``IntegrityError`` if the hash differs.

    The tensors come back in the manifest's order, so ``flat_from_tensors`` gives the flat
    vector a ``ParameterLayout`` with the same names expects.
    """
    path = Path(path)
    manifest = _read_manifest(Path(manifest_path) if manifest_path else manifest_path_for(path))
    fmt = manifest.export.get("format", "torch")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc.strerror}") from None
    if fmt == "safetensors":
        _require_safetensors()
        from safetensors.numpy import load  # type: ignore[import-not-found,unused-ignore]

        try:
            loaded = {str(k): np.asarray(v) for k, v in load(data).items()}
        except Exception as exc:  # the parser raises its own untyped errors
            raise IntegrityError(f"{path} is not a readable safetensors file: {exc}") from None
    elif fmt == "torch":
        loaded = _load_torch(data, path)
    else:
        raise IntegrityError(f"manifest of {path} names unknown export format {fmt!r}")
    order = [t.name for t in manifest.tensors]
    if set(loaded) != set(order):
        extra = sorted(set(loaded) - set(order))
        lacking = sorted(set(order) - set(loaded))
        raise IntegrityError(
            f"model file {path} does not match its manifest: "
            f"tensors {extra} are not listed, {lacking} are absent"
        )
    tensors = [(name, loaded[name]) for name in order]
    manifest.check_tensors(tensors, f"model file {path}")
    return manifest, tensors


def _load_torch(data: bytes, path: Path) -> dict[str, NDArray[Any]]:
    import io

    import torch

    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # a damaged file makes torch's unpickler raise almost anything
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(f"{path} is not a readable torch tensor file: {first}") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise IntegrityError(f"{path} does not hold a dict of named tensors")
    return {k: v.detach().cpu().numpy() for k, v in loaded.items()}

"""Exported models: a portable file (torch or safetensors) plus its manifest beside it.

Theory of operation: ``torch`` is ``torch.save`` of a name → tensor dict, read back with
``weights_only=True``; ``safetensors`` needs that optional package. The manifest travels as
``<file>.manifest.json``; ``import_model`` reads both and refuses a file whose tensors or
recomputed hash differ from the manifest's, so an exported model cannot be swapped.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.governance.models.format import (
    ModelManifest,
    Tensors,
    manifest_path_for,
    read_manifest,
)

EXPORT_FORMATS = ("torch", "safetensors")


def save_portable(tensors: Tensors, out: Path, fmt: str, digest: str) -> None:
    """Write ``tensors`` to ``out`` in export format ``fmt`` (one of ``EXPORT_FORMATS``)."""
    if fmt == "safetensors":
        _save_safetensors(tensors, out, digest)
    else:
        _save_torch(tensors, out)


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
    import torch  # lazily: the model commands that read no torch file start without it

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
    manifest = read_manifest(Path(manifest_path) if manifest_path else manifest_path_for(path))
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
    import torch  # lazily: the model commands that read no torch file start without it

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

"""The model registry: every round's aggregated model, stored with its manifest and lineage.

Theory of operation: ``ModelRegistry`` keeps one folder per version,
``<round:08d>-<hash[:16]>/``, holding ``model.bin`` (the canonical serialisation itself, so
loading re-derives the hash for free), ``manifest.json`` and, when the round was
certified, ``certificate.json``. The manifest is written after the weights, both
atomically, so a crash never leaves a manifest without its model. Loading recomputes the
hash and refuses a mismatch (``IntegrityError``). ``export`` writes a portable copy
(``portable``) with its manifest and certificate beside it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from p2pfed.durable import atomic_write, fsync_dir, write_json
from p2pfed.errors import ConfigError, IntegrityError, LocalError
from p2pfed.governance.models.card import ModelCard
from p2pfed.governance.models.format import (
    ModelManifest,
    Tensors,
    deserialize_model,
    manifest_path_for,
    model_hash,
    model_parts,
    read_manifest,
    tensor_infos,
)
from p2pfed.governance.models.portable import EXPORT_FORMATS, save_portable

MODELS_DIR = "models"
"""A node's registry: this folder inside its ``[node] state_dir``."""

CERTIFICATE_FILE = "certificate.json"
"""A version's commit certificate, beside its model."""


class ModelRegistry:
    """A folder of model versions, one sub-folder per round's aggregated model."""

    def __init__(self, root: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self._clock = clock

    @classmethod
    def open_existing(cls, root: str | os.PathLike[str]) -> ModelRegistry:
        """A registry that must already exist (for read-only commands)."""
        if not Path(root).is_dir():
            raise ConfigError(
                f"model registry {root} does not exist (pass --config FILE or --registry DIR)"
            )
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
            tensors=tensor_infos(tensors),
        )
        folder = self.root / f"{round_number:08d}-{digest[:16]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "model.bin", model_parts(tensors), 0o644)  # streamed
            write_json(folder / "manifest.json", manifest.to_dict())
            if certificate is not None:
                write_json(folder / CERTIFICATE_FILE, dict(certificate))
            fsync_dir(self.root)
        except OSError as exc:
            raise ConfigError(f"cannot store model in {folder}: {exc.strerror}") from None
        return manifest

    def versions(self) -> list[ModelManifest]:
        """Every stored version, oldest round first."""
        if not self.root.is_dir():
            return []
        found = [
            read_manifest(folder / "manifest.json")
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

    def certificate_file(self, manifest: ModelManifest) -> Path:
        """Where ``manifest``'s commit certificate is (or would be) stored."""
        return self._folder(manifest) / CERTIFICATE_FILE

    def attach_certificate(
        self, round_number: int, digest: str, certificate: Mapping[str, Any]
    ) -> ModelManifest | None:
        """Store a certificate that came after its model (late votes, or a member's copy).

        Returns the manifest it was stored beside; None when this registry holds no model
        ``digest`` for ``round_number`` (a model caught up by model sync). A certificate
        already stored is kept: the first one to certify a model is as good as any later.
        """
        for manifest in self.versions():
            if (manifest.round, manifest.model_hash) == (round_number, digest):
                path = self.certificate_file(manifest)
                if not path.exists():
                    write_json(path, dict(certificate))  # ConfigError naming path on failure
                return manifest
        return None

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
        self,
        version: str,
        out: str | os.PathLike[str],
        fmt: str = "torch",
        card: ModelCard | None = None,
    ) -> tuple[Path, Path]:
        """Write the version as a ``fmt`` file plus ``<out>.manifest.json``; returns both paths.

        The exported manifest's ``export`` block adds the lineage (hashes, newest first), the
        round's ε and δ and, given a ``card``, the architecture and preprocessing that
        ``load_model`` needs.
        """
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"export format {fmt!r} is not one of {EXPORT_FORMATS}")
        out = Path(out)
        if not out.parent.is_dir():
            raise ConfigError(f"cannot export to {out}: folder {out.parent} does not exist")
        manifest, tensors = self.load(version)
        save_portable(tensors, out, fmt, manifest.model_hash)
        lineage = [
            c.model_hash if isinstance(c, ModelManifest) else c for c in self.lineage(version)
        ]
        block: dict[str, Any] = {
            "format": fmt,
            "file": out.name,
            "round": manifest.round,
            "privacy": {"epsilon": manifest.dp.get("epsilon"), "delta": manifest.dp.get("delta")},
            "lineage": lineage,
        }
        exported = dataclasses.replace(manifest, export=block | (card.to_dict() if card else {}))
        manifest_path = manifest_path_for(out)
        write_json(manifest_path, exported.to_dict())
        certificate = self.certificate_file(manifest)
        if certificate.exists():  # travels with the file, so ``model check`` can verify it
            copy = out.with_name(out.name + ".certificate.json")
            atomic_write(copy, certificate.read_bytes(), 0o644)
        return out, manifest_path

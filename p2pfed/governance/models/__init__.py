"""Model versions: every round's aggregated model, stored with a manifest and its lineage.

The parts: ``format`` (the canonical serialisation whose SHA-256 is the model hash, and
the manifest), ``registry`` (``ModelRegistry``: one folder per version, lineage, export),
``portable`` (exported torch or safetensors files and ``import_model``), ``card`` (the
architecture and preprocessing an export carries) and ``loadable`` (``load_model``: a
ready ``nn.Module`` and ``predict`` from an exported model).
"""

from p2pfed.governance.models.card import ModelCard
from p2pfed.governance.models.format import (
    MANIFEST_FORMAT,
    ModelManifest,
    TensorInfo,
    Tensors,
    deserialize_model,
    flat_from_tensors,
    manifest_path_for,
    model_hash,
    serialize_model,
    tensors_from_flat,
)
from p2pfed.governance.models.loadable import exported_file, load_model
from p2pfed.governance.models.portable import EXPORT_FORMATS, import_model
from p2pfed.governance.models.registry import MODELS_DIR, ModelRegistry

__all__ = [
    "EXPORT_FORMATS",
    "MANIFEST_FORMAT",
    "MODELS_DIR",
    "ModelCard",
    "ModelManifest",
    "ModelRegistry",
    "TensorInfo",
    "Tensors",
    "deserialize_model",
    "exported_file",
    "flat_from_tensors",
    "import_model",
    "load_model",
    "manifest_path_for",
    "model_hash",
    "serialize_model",
    "tensors_from_flat",
]

"""Model versions: every round's aggregated model, stored with a manifest and its lineage.

The parts: ``format`` (the canonical serialisation whose SHA-256 is the model hash, and
the manifest), ``registry`` (``ModelRegistry``: one folder per version, lineage, export)
and ``portable`` (exported torch or safetensors files and ``import_model``).
"""

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
from p2pfed.governance.models.portable import EXPORT_FORMATS, import_model
from p2pfed.governance.models.registry import MODELS_DIR, ModelRegistry

__all__ = [
    "EXPORT_FORMATS",
    "MANIFEST_FORMAT",
    "MODELS_DIR",
    "ModelManifest",
    "ModelRegistry",
    "TensorInfo",
    "Tensors",
    "deserialize_model",
    "flat_from_tensors",
    "import_model",
    "manifest_path_for",
    "model_hash",
    "serialize_model",
    "tensors_from_flat",
]

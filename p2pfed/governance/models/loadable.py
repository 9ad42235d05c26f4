"""``load_model``: an exported model back as a ready ``nn.Module`` and a ``predict``.

Theory of operation: ``import_model`` checks the file against its manifest's hash first;
the manifest's model card then names the architecture, which ``build_model`` rebuilds,
and the weights are loaded strictly (every parameter, nothing else). ``predict`` applies
the card's preprocessing (columns by name, the same centre and scale) and returns class
probabilities, one row per input row, columns in label order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.governance.models.card import ModelCard
from p2pfed.governance.models.portable import import_model

if TYPE_CHECKING:
    from torch import nn

Predict = Callable[[Any], NDArray[np.float32]]


def exported_file(path: str | os.PathLike[str]) -> Path:
    """The model file at ``path``, or the one exported model in folder ``path``."""
    path = Path(path)
    if not path.is_dir():
        return path
    manifests = sorted(path.glob("*.manifest.json"))
    if len(manifests) != 1:
        raise ConfigError(
            f"folder {path} holds {len(manifests)} exported models (*.manifest.json); "
            "name the model file"
        )
    return manifests[0].with_name(manifests[0].name.removesuffix(".manifest.json"))


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, Predict]:
    """The exported model at ``path`` (file, or folder with one) and its ``predict(rows)``."""
    import torch

    from p2pfed.training.models import build_model
    from p2pfed.training.options import TORCHSCRIPT_PREFIX

    file = exported_file(path)
    manifest, tensors = import_model(file)
    card = ModelCard.from_export(manifest.export, str(file))
    if card.kind.startswith(TORCHSCRIPT_PREFIX) or "(" in card.kind:  # [model] factory call
        raise ConfigError(
            f"{file} holds a {card.kind} model, which load_model cannot rebuild: build it with "
            "your factory (or torch.jit.load the agreed TorchScript file) and load the file's "
            "weights with load_state_dict"
        )
    model = build_model(card.kind, len(card.features), card.n_classes, card.hidden, card.seed)
    state = {name: torch.from_numpy(np.array(a)) for name, a in tensors}
    expected = set(model.state_dict())
    if set(state) != expected:
        raise IntegrityError(
            f"{file} does not fit a {card.kind} model: it lacks {sorted(expected - set(state))} "
            f"(parameters kept on their node never leave it) and has "
            f"{sorted(set(state) - expected)} extra"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shapes that do not fit the rebuilt architecture
        raise IntegrityError(f"{file} does not fit a {card.kind} model: {exc}") from None
    model.eval()

    def predict(rows: Any) -> NDArray[np.float32]:
        """Class probabilities for ``rows`` (a DataFrame or a column → values mapping)."""
        with torch.no_grad():
            logits = model(torch.from_numpy(card.inputs(rows)))
            probabilities: NDArray[np.float32] = torch.softmax(logits, dim=1).numpy()
        return probabilities

    return model, predict

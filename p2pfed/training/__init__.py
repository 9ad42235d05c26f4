"""Local training: data, models, the shared layout, the trainer protocol and trainers, validation.

Names are loaded on first use (PEP 562), so importing ``p2pfed.training.data`` for a
``Dataset`` does not pull in torch; the command line stays quick to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfed.lazy import lazy_names

if TYPE_CHECKING:
    from p2pfed.training.models import build_model as build_model
    from p2pfed.training.options import TrainingConfig as TrainingConfig
    from p2pfed.training.params import ParameterLayout as ParameterLayout
    from p2pfed.training.state import FitResult as FitResult
    from p2pfed.training.state import StatePolicy as StatePolicy
    from p2pfed.training.state import Trainer as Trainer
    from p2pfed.training.torch_trainer import TorchTrainer as TorchTrainer
    from p2pfed.training.trainer import DPSGD as DPSGD
    from p2pfed.training.trainer import LocalTrainer as LocalTrainer
    from p2pfed.training.trainer import Metrics as Metrics
    from p2pfed.training.trainer import TrainResult as TrainResult

_MODULES = {
    "data": (
        "Dataset",
        "dirichlet_split",
        "load_builtin",
        "load_csv",
        "load_parquet",
        "load_table",
        "train_test_split",
    ),
    "models": ("build_model",),
    "options": ("TrainingConfig",),
    "params": ("ParameterLayout",),
    "state": ("FitResult", "StatePolicy", "Trainer"),
    "torch_trainer": ("TorchTrainer",),
    "trainer": ("DPSGD", "LocalTrainer", "Metrics", "TrainResult"),
}
__all__, __getattr__ = lazy_names(__name__, _MODULES)

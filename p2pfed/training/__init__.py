"""Local training: data, models, the shared parameter layout, the trainer, validation."""

from p2pfed.training.data import Dataset, dirichlet_split, load_builtin, load_csv, train_test_split
from p2pfed.training.models import build_model
from p2pfed.training.params import ParameterLayout
from p2pfed.training.trainer import DPSGD, LocalTrainer, Metrics, TrainingConfig, TrainResult

__all__ = [
    "DPSGD",
    "Dataset",
    "LocalTrainer",
    "Metrics",
    "ParameterLayout",
    "TrainResult",
    "TrainingConfig",
    "build_model",
    "dirichlet_split",
    "load_builtin",
    "load_csv",
    "train_test_split",
]

"""Model factories that tests name by reference (``[model] factory = "tiny_models:..."``)."""

from torch import nn


def bn_mlp(n_features: int, width: int = 8, classes: int = 2) -> nn.Module:
    """An MLP with BatchNorm: its running statistics are part of the shared state."""
    return nn.Sequential(
        nn.Linear(n_features, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, classes)
    )


def not_a_model(n_features: int) -> str:
    """Returns something other than a Module."""
    return f"{n_features} features"

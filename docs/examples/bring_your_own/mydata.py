"""A researcher's own data, split and model for ``study.toml`` (see docs/simulation.md)."""

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer


def load():
    """Our split (every 5th row held out), our scaling, and 6 hospitals by row blocks."""
    x, y = load_breast_cancer(return_X_y=True)
    test = np.arange(len(y)) % 5 == 0
    mean, std = x[~test].mean(0), x[~test].std(0)
    x = (x - mean) / std
    train_rows = int((~test).sum())
    hospitals = np.array_split(np.arange(train_rows), 6)
    return {
        "x_train": x[~test],
        "y_train": y[~test],
        "x_test": x[test],
        "y_test": y[test],
        "partition": [h.tolist() for h in hospitals],
    }


def model(features, classes):
    """A small MLP; torch's default initialisation, seeded by the scenario."""
    return torch.nn.Sequential(
        torch.nn.Linear(features, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes)
    )

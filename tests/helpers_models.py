"""A user model factory, as an institution would write one (used by the tests)."""

from torch import nn


def tiny(n_features: int, n_classes: int) -> nn.Module:
    return nn.Linear(n_features, n_classes)


def held(n_features: int, release: str) -> nn.Module:
    """A model built only once the file ``release`` exists (the daemon listens meanwhile)."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + 300
    while not Path(release).exists():  # the test creates it once it has seen what it checks
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return nn.Linear(n_features, 2)

"""A member's round at model scale without needless passes over the model (issue 20 item 5).

Each pass over a 10 M-parameter model is 40 MB copied, mapped and faulted in; these tests
count the passes a round's steps make and check that the numbers are the same as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import p2pfed.training.state as state_module
import p2pfed.training.trainer as trainer_module
from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
from p2pfed.training.state import flatten, unflatten


def _trainer(**config: Any) -> LocalTrainer:
    data = load_builtin("breast_cancer")
    model = build_model("mlp", 30, 2, seed=3)
    options = TrainingConfig(local_steps=3, batch_size=8, **config)
    return LocalTrainer(model, options, torch.Generator().manual_seed(5), train=data)


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fit_loads_the_model_once_and_flattens_it_never(
    monkeypatch: pytest.MonkeyPatch, momentum: float
) -> None:
    """The attack: ``fit`` used to load the state, then load it again and flatten it twice."""
    trainer, twin = _trainer(momentum=momentum), _trainer(momentum=momentum)
    start = trainer.shared_weights()
    state = unflatten(trainer.layout, start)
    loads = [_count(monkeypatch, m, "load_into") for m in (state_module, trainer_module)]
    flattens = _count(monkeypatch, trainer_module, "flatten")
    result = trainer.fit(state, 0)
    assert (sum(n[0] for n in loads), flattens[0]) == (1, 0)
    assert all(p.grad is None for p in trainer.model.parameters())
    # The same training as the vector path's, bit for bit.
    expected = twin.train_round(twin.train, start)
    assert result.metrics["loss"] == expected.loss and result.steps == expected.steps
    np.testing.assert_array_equal(flatten(trainer.layout, result.state) - start, expected.update)

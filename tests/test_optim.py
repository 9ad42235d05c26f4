"""``p2pfed.training.optim``: the same updates as ``torch.optim`` (property tests), torch's
state layout both ways, one clear error for state that does not fit, and no ``torch._dynamo``
in a trainer's process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import IntegrityError
from p2pfed.training.optim import SGD, Adam

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


def _params(seed: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, requires_grad=True) for s in shapes]


def _run(make, params: list[torch.Tensor], steps: int, seed: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """``steps`` updates on gradients drawn from ``seed``; some parameters skip a step."""
    g = torch.Generator().manual_seed(seed + 1)
    opt = make(params)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        for i, p in enumerate(params):
            if (i + step) % 3 != 2:  # a parameter without a gradient is left alone
                p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**16), st.lists(shapes, min_size=1, max_size=4), st.integers(1, 6),
    st.sampled_from([0.0, 0.9]), st.sampled_from([0.0, 1e-2]), st.floats(1e-4, 0.5),
)  # fmt: skip
def test_sgd_makes_torchs_updates(seed, shapes, steps, momentum, decay, lr) -> None:  # type: ignore[no-untyped-def]
    ours = _run(lambda p: SGD(p, lr, momentum, decay), _params(seed, shapes), steps, seed)
    theirs = _run(
        lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=decay),
        _params(seed, shapes), steps, seed,
    )  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**16), st.lists(shapes, min_size=1, max_size=4), st.integers(1, 6),
    st.sampled_from([0.0, 1e-2]), st.floats(1e-4, 0.1),
)  # fmt: skip
def test_adam_makes_torchs_updates(seed, shapes, steps, decay, lr) -> None:  # type: ignore[no-untyped-def]
    ours = _run(lambda p: Adam(p, lr, weight_decay=decay), _params(seed, shapes), steps, seed)
    theirs = _run(
        lambda p: torch.optim.Adam(p, lr=lr, weight_decay=decay),
        _params(seed, shapes), steps, seed,
    )  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda p: SGD(p, 0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (lambda p: Adam(p, 0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ],
)
def test_state_moves_between_torch_optim_and_ours_both_ways(ours, theirs) -> None:  # type: ignore[no-untyped-def]
    shapes = [(3, 2), (2,)]
    # A checkpoint written by torch.optim continues here exactly as it would there ...
    a, b = _params(1, shapes), _params(1, shapes)
    t_a, t_b = theirs(a), theirs(b)
    _run(lambda _: t_a, a, 3, 5)
    _run(lambda _: t_b, b, 3, 5)
    mine = ours(a)
    mine.load_state_dict(t_a.state_dict())
    for opt, params in ((mine, a), (t_b, b)):
        _run(lambda _, o=opt: o, params, 2, 9)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # ... and ours loads into torch.optim.
    back = theirs(_params(1, shapes))
    back.load_state_dict(mine.state_dict())
    assert back.state_dict()["state"].keys() == mine.state_dict()["state"].keys()


def test_state_that_does_not_fit_is_refused_in_one_sentence() -> None:
    params = _params(0, [(3, 2), (2,)])
    saved = SGD(params, 0.1, momentum=0.9)
    _run(lambda _: saved, params, 1, 0)
    state = saved.state_dict()
    with pytest.raises(IntegrityError, match="another number of parameters"):
        SGD(params[:1], 0.1, momentum=0.9).load_state_dict(state)
    with pytest.raises(IntegrityError, match="entry 'exp_avg' is not SGD's"):
        SGD(params, 0.1).load_state_dict({**state, "state": {0: {"exp_avg": torch.zeros(3, 2)}}})
    with pytest.raises(IntegrityError, match=r"has shape \(2,\), not \(3, 2\)"):
        bad = {0: {"momentum_buffer": torch.zeros(2)}}
        SGD(params, 0.1).load_state_dict({**state, "state": bad})
    with pytest.raises(IntegrityError, match="names parameter 7"):
        SGD(params, 0.1).load_state_dict({**state, "state": {7: {}}})


def test_a_trainer_trains_and_checkpoints_without_importing_torch_dynamo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # torch.optim imports torch._dynamo (~70 MB, seconds) at its first optimizer.
    script = f"""
import sys
from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
data = load_builtin("breast_cancer")
for name in ("sgd", "adam"):
    config = TrainingConfig(optimizer=name, momentum=0.9 if name == "sgd" else 0.0)
    t = LocalTrainer(build_model("mlp", 30, 2, seed=1), config)
    t.train_round(data, t.shared_weights())
    t.save_checkpoint({str(tmp_path / "c.pt")!r}, 0, {{}})
    t.load_checkpoint({str(tmp_path / "c.pt")!r})
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr

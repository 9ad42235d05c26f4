"""One member's own work in a round at model scale, stage by stage, without the network.

``python -m tests.profile_member_round [--params 10e6]`` (Linux): the daemon's
``LocalTrainer`` on the sized MLP (2 steps at batch 4), then what a secure round does to
the update — fixed-point encoding and four ChaCha20 keystreams on (mask), four off
(unmask; the ring's sum stands in for the masked sum), the chunked decode, adopting the
mean (load, re-flatten, digest) with the checkpoint (commit), and the registry version.
Prints JSON: per stage the CPU seconds (``process_time``) and the peak resident set above
the round's start (``VmHWM``, reset per stage through ``/proc/self/clear_refs``), for the
second of two rounds. docs/benchmarks.md, *A round with a big model*, has the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from p2pfed.daemon.memory import return_freed_memory
from p2pfed.governance.models import ModelRegistry, tensors_from_flat
from p2pfed.node.aggregators import decoded_mean, weighted_vector
from p2pfed.node.sync import weights_digest
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.primitives import mask_vector
from p2pfed.training import LocalTrainer, TrainingConfig, load_builtin, sized
from p2pfed.training.state import flatten, save_checkpoint, unflatten, update_of


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) // 1024
    return 0


class _Stages:
    """CPU seconds and peak resident set above the round's start, per stage."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self.base, self.clock = 0, 0.0

    def start(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base, self.clock = _status("VmRSS:"), time.process_time()

    def mark(self, name: str) -> None:
        peak = _status("VmHWM:") - self.base
        self.stages[name] = {"cpu_s": round(time.process_time() - self.clock, 3), "peak_mb": peak}
        Path("/proc/self/clear_refs").write_text("5")
        self.clock = time.process_time()


def main() -> None:
    """Two rounds of one member's work; the second one's stages as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=10e6)
    args = parser.parse_args()
    return_freed_memory()  # as `p2pfed run` does
    data = load_builtin("breast_cancer")
    torch.manual_seed(0)
    config = TrainingConfig(local_steps=2, batch_size=4, learning_rate=1e-4)  # raw features
    model = sized.mlp(30, int(args.params))
    trainer = LocalTrainer(model, config, torch.Generator().manual_seed(0), train=data)
    layout, fixed = trainer.layout, FixedPoint()
    weights = flatten(layout, trainer.get_state())
    folder = Path(tempfile.mkdtemp(prefix="p2pfed-profile-"))
    registry = ModelRegistry(folder / "models")
    keys = [(bytes([i]) * 32, 1) for i in range(1, 4)]
    timer = _Stages()
    for round_ in range(2):
        timer.start()
        mark = timer.mark
        result = trainer.fit(unflatten(layout, weights), round_)
        update, result = update_of(layout, result, weights)
        mark("train")
        words = fixed.encode(weighted_vector(update, None), np.random.default_rng(0), 4)
        mask_vector(words, bytes(32), keys)
        mark("mask")
        mask_vector(words, bytes(32), [(key, -1) for key, _ in keys])
        mark("unmask")
        mean = decoded_mean(fixed, words, 4, False)
        assert mean is not None
        mark("decode")
        weights = weights + mean
        weights_digest(weights)
        trainer.set_state(unflatten(layout, weights))
        weights = flatten(layout, trainer.get_state())
        save_checkpoint(trainer, folder / "checkpoint.pt", round_, {})
        mark("commit")
        registry.add(
            round_, tensors_from_flat(layout.names, layout.shapes, weights), parent_hash=None
        )
        mark("registry")
        del update, words, mean, result
    report = {"params": layout.size, "round_start_mb": timer.base, "stages": timer.stages}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

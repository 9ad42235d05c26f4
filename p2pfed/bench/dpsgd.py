"""``p2pfed bench dpsgd``: a DP-SGD step against a plain step and Opacus, in time and memory.

Theory of operation: for each model (an MLP, and a small CNN with GroupNorm whose
parameters sit mostly in its fully connected head, as in LeNet-like nets) at each requested
parameter count, three fresh Python processes each build the same model and random batch
(28×28 inputs, 10 classes) and time one kind of step, on one torch thread:

- ``plain``: forward, backward, SGD step (the non-private baseline);
- ``p2pfed``: ``p2pfed.privacy.dpsgd.dp_sgd_step`` (ghost clipping, noise from a seeded
  ``torch.Generator``: the clipping's own cost);
- ``node``: the same step with the noise a daemon draws, ``SecureGaussian`` over ChaCha20
  (four Box–Muller draws per value): what a member's DP-SGD step costs;
- ``opacus``: Opacus's own fast gradient clipping (``grad_sample_mode="ghost"``), the anchor,
  when the ``bench`` extra is installed; otherwise the case says so and reports no figure.

A step is timed ``--repeats`` times after two warm-up steps; the medians of its wall and CPU
seconds are reported, and ``ratio_time`` compares CPU seconds: a one-thread process's CPU
time is its own work, where on a shared machine its wall time is mostly waiting. Memory
is the process's RSS high-water mark (``VmHWM`` of ``/proc/self/status``: tracemalloc does
not see torch's allocator), as a whole (``*_peak_mb``) and above the RSS once the model,
batch and optimiser exist (``*_step_mb``: what the steps themselves added). Targets from
issue 20, for the MLP: ≤ 3× the plain step's time and ≤ 1.5× its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

# torch and opacus are imported inside functions: every benchmark module is imported when
# `p2pfed --help` builds its parser.
NAME = "dpsgd"
HELP = "DP-SGD step time and peak memory vs a plain step and Opacus, MLP and CNN (JSON)."

_KINDS = ("plain", "p2pfed", "node", "opacus")
_TARGET_TIME, _TARGET_MEM = 3.0, 1.5


_counts = comma_list(
    lambda v: int(float(v)), "a parameter count of at least 5e4 (like 1e6)", lambda n: n >= 5e4
)
_models = comma_list(str, "mlp or cnn", ("mlp", "cnn").__contains__)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.add_argument("--params", type=_counts, default=[10**6, 10**7], help="1e6,10e6")
    parser.add_argument("--batch", type=int, default=32, help="examples per step (32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case (5)")
    parser.add_argument("--models", type=_models, default=["mlp", "cnn"], help="mlp,cnn")
    parser.set_defaults(func=run)


def build(model: str, params: int) -> Any:
    """The benchmark's ``model`` with about ``params`` parameters."""
    from torch import nn

    if model == "mlp":  # 784 → h → h → 10: h² + 796h + 10 parameters
        h = round((-796 + (796**2 + 4 * (params - 10)) ** 0.5) / 2)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10)
        )
    # two conv blocks (19 008 parameters) to 64×7×7, then 3136 → h → 10
    h = max(1, round((params - 19_018) / 3147))
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.GroupNorm(8, 64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, h),
        nn.ReLU(),
        nn.Linear(h, 10),
    )


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model_name: str, params: int, batch: int, kind: str, repeats: int) -> dict[str, Any]:
    """Time ``repeats`` steps of one ``kind`` in this process (meant for a fresh subprocess)."""
    import torch
    from torch import nn

    from p2pfed.privacy.dpsgd import dp_sgd_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(model_name, params)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.functional.cross_entropy
    if kind == "plain":

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss_fn(model(x), y))
            optimizer.step()

    elif kind in ("p2pfed", "node"):
        from p2pfed.privacy.sampling import SecureGaussian

        noise = g if kind == "p2pfed" else SecureGaussian()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            dp_sgd_step(model, loss_fn, (x, y), clip_norm=1.0, noise_multiplier=1.0,
                        generator=noise, expected_batch_size=batch,
                        optimizer=optimizer)  # fmt: skip

    else:
        step = _opacus_step(model, optimizer, x, y)
    base = _rss_mb("VmRSS")
    wall, cpu = [], []
    for i in range(repeats + 2):
        cpu_start = time.process_time()
        start = time.perf_counter()
        step()
        if i >= 2:  # two warm-up steps
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    peak = _rss_mb("VmHWM")
    return {
        "step_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "peak_mb": round(peak, 1),
        "step_mb": round(peak - base, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _opacus_step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
    import warnings

    import torch
    from opacus import PrivacyEngine

    warnings.simplefilter("ignore")  # Opacus warns about secure RNG and accounting
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
    model, optimizer, criterion, _ = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        criterion=torch.nn.CrossEntropyLoss(), noise_multiplier=1.0, max_grad_norm=1.0,
        grad_sample_mode="ghost", poisson_sampling=False,
    )  # fmt: skip

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def _opacus_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opacus")
    except PackageNotFoundError:
        return None


def _child(model: str, params: int, batch: int, kind: str, repeats: int) -> dict[str, Any]:
    code = (
        "import json\n"
        "from p2pfed.bench.dpsgd import measure\n"
        f"print(json.dumps(measure({model!r}, {params}, {batch}, {kind!r}, {repeats})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"benchmark {kind} step of {model} at {params} failed: {tail[0]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _case(model: str, params: int, batch: int, repeats: int, opacus: bool) -> dict[str, Any]:
    got = {
        kind: _child(model, params, batch, kind, repeats)
        for kind in _KINDS
        if kind != "opacus" or opacus
    }
    plain, ours, node = got["plain"], got["p2pfed"], got["node"]
    anchor = got.get("opacus")
    case: dict[str, Any] = {"model": model, "params": plain["params"], "batch": batch}
    names = (("plain", "plain"), ("p2pfed", "dpsgd"), ("node", "node"), ("opacus", "opacus"))
    for kind, name in names:
        for key in ("step_s", "step_cpu_s", "peak_mb", "step_mb"):
            case[f"{name}_{key}"] = got[kind][key] if kind in got else None
    # CPU seconds of a one-thread process: wall time on a shared machine is mostly waiting
    case["ratio_time"] = round(ours["step_cpu_s"] / plain["step_cpu_s"], 3)
    case["ratio_time_wall"] = round(ours["step_s"] / plain["step_s"], 3)
    case["ratio_time_node"] = round(node["step_cpu_s"] / plain["step_cpu_s"], 3)
    case["ratio_mem"] = round(ours["peak_mb"] / plain["peak_mb"], 3)
    case["ratio_mem_step"] = round(max(ours["step_mb"], 1.0) / max(plain["step_mb"], 1.0), 3)
    case["ratio_time_vs_opacus"] = (
        None if anchor is None else round(ours["step_cpu_s"] / anchor["step_cpu_s"], 3)
    )
    if model == "mlp":
        case["meets_time_target"] = case["ratio_time"] <= _TARGET_TIME
        case["meets_time_target_node"] = case["ratio_time_node"] <= _TARGET_TIME
        case["meets_mem_target"] = case["ratio_mem"] <= _TARGET_MEM
    return case


def noise_ns_per_value(n: int = 1 << 20, repeats: int = 3) -> dict[str, float]:
    """CPU ns per Gaussian value of each noise source, best of ``repeats`` draws of ``n``."""
    import numpy as np
    import torch

    from p2pfed.privacy.sampling import ChaChaSource, SecureGaussian

    torch.set_num_threads(1)
    secure, pcg, gen = SecureGaussian(), np.random.default_rng(), torch.Generator()
    buffer, wide = torch.empty(n), torch.empty(n, dtype=torch.float64)
    keystream, words = ChaChaSource(), np.empty(4 * SecureGaussian.CHUNK + 8, np.uint64)

    def keystream_alone() -> None:  # the four words a value takes, as standard_into draws them
        for _ in range(0, n, SecureGaussian.CHUNK):
            keystream.uint64_into(words, 4 * SecureGaussian.CHUNK)

    draws: dict[str, Callable[[], object]] = {
        "secure_gaussian": lambda: secure.normal(0.0, 1.0, n),
        # what DP-SGD draws: the same uniforms and pairs, torch's float64 maths
        "secure_gaussian_torch": lambda: secure.standard_into(wide, torch, torch.from_numpy),
        # of which the ChaCha20 keystream alone (the rest: float64 log, sqrt, cos, sin)
        "chacha20_keystream_4_words": keystream_alone,
        "torch_normal": lambda: buffer.normal_(0.0, 1.0, generator=gen),
        "numpy_pcg64": lambda: pcg.normal(0.0, 1.0, n),
    }
    out = {}
    for name, draw in draws.items():
        times = []
        for _ in range(repeats + 1):
            start = time.process_time()
            draw()
            times.append(time.process_time() - start)
        out[name] = round(min(times[1:]) / n * 1e9, 1)  # the first warms up
    return out


def run(args: argparse.Namespace) -> int:
    """Run every case in fresh subprocesses and print one JSON document."""
    if args.batch < 1 or args.repeats < 1:
        raise ConfigError(f"--batch and --repeats must be ≥ 1, got {args.batch}, {args.repeats}")
    opacus = _opacus_version()
    load_before = os.getloadavg()
    cases = []
    for model in args.models:
        for params in args.params:
            print(f"timing {model} at {params} parameters…", file=sys.stderr, flush=True)
            cases.append(_case(model, params, args.batch, args.repeats, opacus is not None))
    print_json(
        {
            "bench": "dpsgd",
            "cases": cases,
            "opacus": opacus
            or "not installed (pip install -e '.[bench]'): no Opacus figures in this run",
            "timing": f"median of {args.repeats} steps after 2 warm-up, 1 torch thread: "
            "*_step_s wall, *_step_cpu_s CPU seconds; ratio_time uses CPU seconds",
            "noise": "dpsgd_*: a seeded torch.Generator (the clipping's cost); node_*: "
            "SecureGaussian over ChaCha20, what a member draws",
            "noise_cpu_ns_per_value": noise_ns_per_value(),
            "memory": "VmHWM of a fresh process per case and kind, MB; *_step_mb above setup",
            "targets": {"mlp_ratio_time": _TARGET_TIME, "mlp_ratio_mem": _TARGET_MEM},
            "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
            "cpus": os.cpu_count(),
        }
    )
    return 0

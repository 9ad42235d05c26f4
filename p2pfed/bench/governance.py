"""``p2pfed bench governance``: what the audit log and model hashing cost, against baselines.

Theory of operation: in one run and one process, each governance cost is timed next to the
floor it cannot beat. *Append*: ``AuditLog`` writes N signed, chained cohort entries with an
``fsync`` each; the baseline writes lines of the same size with ``write`` + ``fsync`` and
nothing else, so the difference is JSON, Ed25519 signing and hashing. *Verify*:
``verify_log`` over those N entries; the baselines are parsing the lines as JSON and one
Ed25519 verification per line. *Model hash*: ``model_hash`` of a float32 tensor against one
SHA-256 of the same bytes. The files go in a temporary folder under ``--dir`` (default: the
current folder, on purpose: ``/tmp`` may be memory-backed, where ``fsync`` costs nothing).
Nothing is asserted; the load average is reported because the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey, VerifyKey

from p2pfed.bench._timing import best_of
from p2pfed.errors import ConfigError
from p2pfed.governance.audit import AuditLog, verify_log
from p2pfed.governance.models import model_hash
from p2pfed.identity import Identity
from p2pfed.output import print_json

NAME = "governance"
HELP = "Cost of audit appends (fsync'd), log verification and model hashing, with baselines."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options and set ``func``."""
    parser.add_argument("--entries", type=int, default=300, help="audit entries (default 300)")
    parser.add_argument("--model-mb", type=int, default=64, help="model size in MB (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is kept (3)")
    parser.add_argument("--dir", default=".", help="where the temporary files go (default .)")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry; JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Time every case and print one JSON document."""
    if args.entries < 1 or args.model_mb < 1 or args.repeat < 1:
        raise ConfigError("--entries, --model-mb and --repeat must be positive")
    if not Path(args.dir).is_dir():
        raise ConfigError(f"--dir {args.dir} is not a folder")
    load_before = os.getloadavg()
    identity = Identity.from_seed(b"\x07" * 32)
    cohort = [f"peer-{i}" for i in range(8)]
    n = args.entries
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".p2pfed-bench-") as tmp:
        folder = Path(tmp)
        counter = iter(range(1 << 30))

        def append() -> None:
            with AuditLog(folder / f"a{next(counter)}.jsonl", identity, salt=b"s" * 32) as log:
                for r in range(n):
                    log.cohort(r, cohort)

        append_s = best_of(args.repeat, append).seconds
        log_path = folder / "a0.jsonl"
        lines = log_path.read_bytes().splitlines(keepends=True)
        line_bytes = sum(len(x) for x in lines) // len(lines)

        def raw_append() -> None:
            fd = os.open(folder / f"raw{next(counter)}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for line in lines:
                    os.write(fd, line)
                    os.fsync(fd)
            finally:
                os.close(fd)

        raw_s = best_of(args.repeat, raw_append).seconds
        verify_s = best_of(args.repeat, lambda: verify_log(log_path)).seconds
        parse_s = best_of(args.repeat, lambda: [json.loads(x) for x in lines]).seconds
        key = SigningKey(b"\x07" * 32)
        signed = [key.sign(x) for x in lines]
        vk = VerifyKey(bytes(key.verify_key))
        ed_s = best_of(args.repeat, lambda: [vk.verify(s) for s in signed]).seconds
    vector = np.random.default_rng(0).standard_normal(args.model_mb * 250_000).astype(np.float32)
    nbytes = vector.nbytes
    hash_s = best_of(args.repeat, lambda: model_hash([("w", vector)])).seconds
    sha_s = best_of(args.repeat, lambda: hashlib.sha256(vector.data).digest()).seconds
    print_json(
        {
            "entries": n,
            "entry_bytes": line_bytes,
            "append_ms_per_entry": round(1e3 * append_s / n, 3),
            "baseline_write_fsync_ms_per_entry": round(1e3 * raw_s / n, 3),
            "verify_us_per_entry": round(1e6 * verify_s / n, 1),
            "baseline_json_parse_us_per_entry": round(1e6 * parse_s / n, 1),
            "baseline_ed25519_verify_us_per_entry": round(1e6 * ed_s / n, 1),
            "model_mb": nbytes / 1e6,
            "model_hash_mb_s": round(nbytes / hash_s / 1e6, 1),
            "baseline_sha256_mb_s": round(nbytes / sha_s / 1e6, 1),
            "dir": str(Path(args.dir).resolve()),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
    )
    return 0

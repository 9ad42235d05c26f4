"""A daemon gives the memory its rounds free back to the system (glibc's mmap threshold)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import p2pfed

MODULE = Path(p2pfed.__file__).parent / "daemon" / "memory.py"

# A process frees a 16 MB block (glibc then raises its mmap threshold to 16 MB), then
# allocates 120 MB in 4 MB blocks and frees all but the last: what stays resident?
PROBE = """
import runpy, sys
import numpy as np

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "fixed":
    assert runpy.run_path(sys.argv[2])["return_freed_memory"]()
big = np.ones(16 << 20, np.uint8)
del big
before = rss_mb()
blocks = [np.ones(4 << 20, np.uint8) for _ in range(30)]
last = blocks[-1]
del blocks
print(rss_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(MODULE)], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, /proc")
def test_memory_a_round_frees_goes_back_to_the_system() -> None:
    default, fixed = _kept_mb("default"), _kept_mb("fixed")
    if default < 60:
        pytest.skip(f"this C library returns freed blocks by itself ({default:.0f} MB kept)")
    assert fixed < 16, f"{fixed:.0f} MB of 116 MB freed stayed resident (default: {default:.0f})"


def test_the_daemon_sets_it_before_it_builds_anything() -> None:
    source = (Path(p2pfed.__file__).parent / "cli" / "commands" / "run.py").read_text()
    assert source.index("return_freed_memory()") < source.index("prepare(config")

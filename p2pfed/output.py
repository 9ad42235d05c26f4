"""What commands and benchmarks print: one JSON document on stdout.

Theory of operation: the command line (``p2pfed.cli``) and the benchmarks (``p2pfed.bench``)
both report as JSON with sorted keys, stable for diffs and tests. The writer lives below
both, so neither package imports the other for it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(payload: Any) -> None:
    """Print one JSON document on stdout (sorted keys, stable for diffs and tests)."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")

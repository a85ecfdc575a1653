"""Writing a benchmark's results: one JSON file with the machine it ran on and its wall time."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def write_results(
    path: Path, payload: dict[str, Any], started: float, machine: dict[str, Any] | None = None
) -> None:
    """``payload`` plus ``machine`` (cpus, platform and the caller's ``machine`` facts) and
    ``wall_seconds`` (since ``started``, a perf_counter)."""
    wall = time.perf_counter() - started
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()} | (machine or {}),
        "wall_seconds": wall,
    } | payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path} ({wall:.0f} s)")

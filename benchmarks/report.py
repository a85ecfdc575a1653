"""Reporting a benchmark: one JSON file with the machine it ran on and its wall time, and the
paired comparison of two methods over the same seeds."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


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


def paired(mine: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Per-seed differences (ours - peer, seed by seed; negative = ours better): wins, ties,
    losses, the median difference and a two-sided Wilcoxon signed-rank p-value (1.0 with
    fewer than two untied seeds)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(mine, dtype=float) - np.asarray(theirs, dtype=float)
    nonzero = diff[np.abs(diff) > 1e-12]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else 1.0
    return {
        "wins": int((diff < -1e-12).sum()),
        "ties": int((np.abs(diff) <= 1e-12).sum()),
        "losses": int((diff > 1e-12).sum()),
        "median_diff": float(np.median(diff)),
        "wilcoxon_p": p,
    }

"""Running and reporting a benchmark: its runs side by side, one JSON file with the machine it
ran on and its wall time, the paired comparison of two methods over the same seeds, and the run
caches that let a rerun (or ``--peers-from`` a committed results file) skip the peers."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from torchtune_hp.files import write_text


def run_jobs(
    run: Callable[[Any], dict[str, Any]], jobs: Iterable[Any], workers: int
) -> Iterator[dict[str, Any]]:
    """Each job's result as it finishes: side by side in ``workers`` processes, or in this
    process with one worker, so what the caller set up here (a test's cache folder) holds
    whatever start method the platform's process pool uses."""
    if workers <= 1:
        yield from map(run, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        for fut in as_completed([pool.submit(run, job) for job in jobs]):
            yield fut.result()


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


def store(path: Path, run: dict[str, Any]) -> None:
    """Keep one run in a benchmark's run cache, whole or not at all (two benchmark runs may
    share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(run))


def file_runs(
    results: Path,
    kind: str,
    path_of: Callable[[dict[str, Any]], Path | None],
    keys: tuple[str, ...],
    check: Callable[[dict[str, Any]], None] = lambda data: None,
    optional: tuple[str, ...] = (),
) -> int:
    """``--peers-from``: file the runs of an earlier results JSON (such as a committed
    ``benchmarks/results/*.json``) in a benchmark's run cache, so a fresh checkout compares
    ours against the peers without running them again. ``path_of`` gives a run's cache file,
    or None for a run to leave out (ours, another budget, a peer not installed); files that
    exist are left alone. The results do not record package versions: use them with the
    versions the README names. A run keeps ``keys`` and those of ``optional`` it has.
    Returns how many runs were filed; raises ValueError naming the file when it is not a
    ``kind`` results file, or (``check``) not one this run can use."""
    try:
        data = json.loads(results.read_text())
        runs = data["runs"]
        check(data)
        filed = 0
        for r in runs:
            path = path_of(r)
            if path is None or path.exists():
                continue
            store(path, {k: r[k] for k in keys} | {k: r[k] for k in optional if k in r})
            filed += 1
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{results}: not a {kind} results file ({e!r})") from e
    return filed


def read_runs(paths: Iterable[Path], kind: str) -> list[dict[str, Any]]:
    """``--rescore``: the runs of earlier results files, together; exits naming the file that
    is not a ``kind`` results file."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        try:
            runs += json.loads(path.read_text())["runs"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"--rescore: {path}: not a {kind} results file ({e!r})") from e
    return runs


def lead_chance(
    mine: list[float], peers: list[list[float]], draws: int = 2000, seed: int = 0
) -> float:
    """How sure a "best median" is: the share of bootstrap draws (each method's seeds drawn
    again with replacement, as many as it ran) in which ``mine``'s median is below every
    peer's median. At five seeds a median moves a lot from one seed set to the next; this
    says whether a lead or a loss would likely hold on another."""
    rng = np.random.default_rng(seed)

    def medians(values: list[float]) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        return np.median(v[rng.integers(0, len(v), size=(draws, len(v)))], axis=1)

    best_peer = np.min([medians(p) for p in peers], axis=0)
    return float(np.mean(medians(mine) < best_peer))


def count_interval(chances: list[float], low: float = 0.05, high: float = 0.95) -> tuple[int, int]:
    """The ``low`` and ``high`` quantiles of how many of independent events with these
    ``chances`` happen (the Poisson-binomial distribution, exactly): how many problems a
    method would lead on, on another draw of seeds."""
    dist = np.array([1.0])
    for p in chances:
        dist = np.convolve(dist, [1.0 - p, p])
    cdf = np.cumsum(dist)
    return int(np.searchsorted(cdf, low - 1e-12)), int(np.searchsorted(cdf, high - 1e-12))

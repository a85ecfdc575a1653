"""Bookkeeping cost per trial as a study grows: the driver's own overhead, not the objective's.

    python -m benchmarks.run_bookkeeping                  # 10,000 trials, marks at 100/1k/10k
    python -m benchmarks.run_bookkeeping --trials 2000 --marks 100 1000 2000 --no-peers

An instant objective and the random sampler, a study on disk (SQLite, TensorBoard on: what a
user gets by default) in a temporary folder. For each mark the mean of the 100 trials before it
is reported: the whole trial (ask + objective + tell) and ``ask``/``tell`` alone. Then
``torchtune-hp trials`` (table and JSON) on the finished study, as a subprocess (start-up
included, median of 3). With Optuna installed (the ``bench`` extra), the same loop runs on an
Optuna study with SQLite storage (``ask``/``tell``, random sampler), in the same run, as the
reference. Prints a table and writes ``benchmarks/results/bookkeeping.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchtune_hp import Float, Study

RESULTS = Path(__file__).parent / "results"
WINDOW = 100


def timed(ask: Callable[[], Any], tell: Callable[[Any, float], Any], n: int) -> list[tuple]:
    """(ask, tell, whole trial) seconds for each of ``n`` trials of an instant objective."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = ask()
        t1 = time.perf_counter()
        value = trial.params["x"] + trial.params["y"]
        t2 = time.perf_counter()
        tell(trial, value)
        t3 = time.perf_counter()
        out.append((t1 - t0, t3 - t2, t3 - t0))
    return out


def run_ours(logdir: Path, n: int) -> list[tuple[float, float, float]]:
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("book", space, sampler="random", seed=0, logdir=logdir)
    try:
        return timed(study.ask, study.tell, n)
    finally:
        study.close()


def run_optuna(logdir: Path, n: int) -> list[tuple[float, float, float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{logdir / 'optuna.db'}"
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    dists = {
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
        "y": optuna.distributions.FloatDistribution(0.0, 1.0),
    }
    return timed(lambda: study.ask(dists), study.tell, n)


def windows(times: list[tuple[float, float, float]], marks: list[int]) -> dict[int, dict]:
    out = {}
    for mark in marks:
        part = times[max(0, mark - WINDOW) : mark]
        out[mark] = {
            "ask_ms": 1000 * statistics.mean(t[0] for t in part),
            "tell_ms": 1000 * statistics.mean(t[1] for t in part),
            "trial_ms": 1000 * statistics.mean(t[2] for t in part),
        }
    return out


def time_command(args: list[str], repeats: int = 3) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def measure(name: str, run: Callable[[Path, int], list], n: int, marks: list[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bookkeeping_{name}_") as tmp:
        t0 = time.perf_counter()
        times = run(Path(tmp), n)
        result: dict[str, Any] = {"total_s": time.perf_counter() - t0}
        result["marks"] = windows(times, marks)
        if name == "ours":
            cli = [sys.executable, "-m", "torchtune_hp", "trials", str(Path(tmp) / "book")]
            result["trials_table_s"] = time_command(cli)
            result["trials_json_s"] = time_command([*cli, "--format", "json"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--marks", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--no-peers", action="store_true", help="skip Optuna")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    marks = [m for m in args.marks if m <= args.trials]
    results = {"ours": measure("ours", run_ours, args.trials, marks)}
    if not args.no_peers and importlib.util.find_spec("optuna"):
        results["optuna_sqlite"] = measure("optuna", run_optuna, args.trials, marks)

    print(f"per-trial bookkeeping, ms: mean of the {WINDOW} trials before each mark")
    print(f"{'':16}{'trials':>8}{'ask':>10}{'tell':>10}{'trial':>10}")
    for name, r in results.items():
        for m in marks:
            w = r["marks"][m]
            print(f"{name:16}{m:>8}{w['ask_ms']:>10.2f}{w['tell_ms']:>10.2f}{w['trial_ms']:>10.2f}")
    ours = results["ours"]["marks"]
    ratio = ours[marks[-1]]["trial_ms"] / ours[marks[0]]["trial_ms"]
    print(f"ours: per-trial cost at {marks[-1]} trials / at {marks[0]} = {ratio:.2f}x")
    if "optuna_sqlite" in results:
        theirs = results["optuna_sqlite"]["marks"][marks[-1]]["trial_ms"]
        vs = ours[marks[-1]]["trial_ms"] / theirs
        print(f"at {marks[-1]} trials: ours / Optuna with SQLite = {vs:.2f}x")
    print(
        f"torchtune-hp trials on {args.trials} trials: table "
        f"{results['ours']['trials_table_s']:.2f} s, json {results['ours']['trials_json_s']:.2f} s"
    )
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "trials": args.trials,
        "ratio_last_to_first": ratio,
        "results": results,
    }
    (RESULTS / "bookkeeping.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

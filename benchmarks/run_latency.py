"""ask() latency on Hartmann6 at a given number of observations: ours vs Optuna's GPSampler,
measured in the same process, one after the other, on the same history.

    python -m benchmarks.run_latency                     # 50 100 200 400 1000 observations
    python -m benchmarks.run_latency --sizes 100 --device cuda
    python -m benchmarks.run_latency --sizes 100 --options '{"acquisition": "mace"}'

For each size: ``n - 1`` random observations are added, one ask/tell warms the sampler (both
samplers warm-start their kernel fit from the previous one, as in a running study), then
``--repeats`` asks are timed (each followed by its tell). Prints median and mean (ours refits
its hyperparameters every ~5% growth, so the mean includes that amortized cost) and writes
``benchmarks/results/latency.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.optimizers import optuna_distributions
from benchmarks.problems import PROBLEMS
from benchmarks.report import write_results
from torchtune_hp import Study

RESULTS = Path(__file__).parent / "results"
PROBLEM = PROBLEMS["hartmann6"]


def history(n: int, seed: int = 0) -> list[tuple[dict[str, Any], float]]:
    rng = np.random.default_rng(seed)
    pts = [PROBLEM.space.decode(u.tolist()) for u in rng.random((n, PROBLEM.space.dim))]
    return [(p, PROBLEM.f(p)) for p in pts]


def time_ours(n: int, repeats: int, device: str, options: dict[str, Any]) -> list[float]:
    opts = {"device": device, **options}
    study = Study("lat", PROBLEM.space, sampler="gp", seed=0, logdir=None, sampler_options=opts)
    for p, v in history(n - 1):
        study.add(p, v)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        dt = time.perf_counter() - t0
        study.tell(trial, PROBLEM.f(trial.params))
        if i:  # the first ask warms the fit
            times.append(dt)
    return times


def time_optuna(n: int, repeats: int) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = optuna_distributions(PROBLEM.space)
    study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=0))
    study.add_trials(
        [
            optuna.trial.create_trial(params=p, distributions=dists, value=v)
            for p, v in history(n - 1)
        ]
    )
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        trial = study.ask(dists)  # Optuna samples relative params inside ask()
        dt = time.perf_counter() - t0
        study.tell(trial, PROBLEM.f(trial.params))
        if i:
            times.append(dt)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="*", type=int, default=[50, 100, 200, 400, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-optuna", action="store_true")
    ap.add_argument(
        "--options",
        type=json.loads,
        default={},
        help='ours with gp options, e.g. \'{"acquisition": "mace"}\'',
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    args = ap.parse_args()
    started = time.perf_counter()
    warnings.filterwarnings("ignore")
    with_optuna = not args.no_optuna and importlib.util.find_spec("optuna") is not None
    rows = []
    print(
        f"ask() latency on Hartmann6, seconds (median of {args.repeats}), "
        f"torch threads {torch.get_num_threads()}, ours on {args.device} {args.options or ''}"
    )
    print(
        f"{'n':>6} {'ours':>9} {'ours mean':>10} {'optuna_gp':>10} {'optuna mean':>12} {'ratio':>7}"
    )
    for n in args.sizes:
        ours_t = time_ours(n, args.repeats, args.device, args.options)
        opt_t = time_optuna(n, args.repeats) if with_optuna else [float("nan")]
        ours, opt = float(np.median(ours_t)), float(np.median(opt_t))
        print(
            f"{n:>6} {ours:>9.3f} {np.mean(ours_t):>10.3f} {opt:>10.3f} {np.mean(opt_t):>12.3f} "
            f"{ours / opt:>7.2f}"
        )
        rows.append(
            {
                "n": n,
                "ours_s": ours_t,
                "optuna_gp_s": opt_t if with_optuna else None,
                "ours_median_s": ours,
                "optuna_gp_median_s": opt if with_optuna else None,
            }
        )
    machine = {"device": args.device, "torch_threads": torch.get_num_threads()}
    write_results(args.out, {"options": args.options, "rows": rows}, started, machine)


if __name__ == "__main__":
    main()

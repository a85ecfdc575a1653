"""How well the learning-curve model forecasts where a stopped curve would have ended.

    python -m benchmarks.run_forecast                                  # every task and kernel
    python -m benchmarks.run_forecast --tasks synthetic --kernels matern freeze_thaw --reps 4
    python -m benchmarks.run_forecast --kernels matern_decay --scale boxcox --reps 48

The decisions of ``pruner: gp`` are only as good as its forecasts, and the anytime benchmark
(``run_curves``) mixes their quality with the search and with seed-to-seed luck. This one
measures the forecasts alone, the way the pruner makes them. Per task, a pool of ``--pool``
configurations trained whole is drawn from the curve cache of :mod:`benchmarks.curve_tasks`
(what ``run_curves`` trained: the optimizers' picks, good and bad), topped up with random
configurations trained here; a machine with another cache draws another pool. Each repetition
draws ``--complete`` of them as COMPLETE trials and ``--partial`` as trials stopped at 1, 2, 4
or 8 epochs (the pruner's rungs), fits the model of each ``--kernels`` entry on them, and
forecasts the final running best of every stopped trial. ``last`` is the no-model baseline: the
best value the trial reported so far (what a rank rule such as ASHA's goes by).

Per task and kernel it prints the mean over repetitions of: the forecast error (root mean
square, over the spread of the true final values), the Spearman rank correlation between
forecast and truth, the share of the best quarter by forecast that is in the true best
quarter (what keeping the leaders needs), the share of truths within one forecast sd (none
for ``last``), and the fit time. Writes ``benchmarks/results/forecast.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.curve_tasks import CurveTask, tasks
from benchmarks.report import write_results
from torchtune_hp.gp.curves import KERNELS, SCALES, CurveModel
from torchtune_hp.gp.threads import torch_threads
from torchtune_hp.trial import FrozenTrial, TrialState

RESULTS = Path(__file__).parent / "results"
RUNGS = (1, 2, 4, 8)
METRICS = ("rmse_over_sd", "spearman", "top_quarter", "within_1sd", "fit_seconds")


def pool(task: CurveTask, n: int, seed: int = 0) -> list[tuple[dict[str, Any], list[float]]]:
    """``n`` configurations and their whole curves: a seeded draw of the whole curves the
    task's cache holds (``run_curves`` leaves several hundred), topped up with random
    configurations trained here when it holds fewer."""
    rng = np.random.default_rng(seed)
    cached = sorted(
        (key, curve) for key, curve in task.cached_curves().items() if len(curve) >= task.epochs
    )
    picked = [cached[i] for i in rng.permutation(len(cached))[:n]]
    out = [(json.loads(key), curve[: task.epochs]) for key, curve in picked]
    while len(out) < n:
        params = task.space.decode(rng.random(task.space.dim).tolist())
        out.append((params, [task.value(params, e) for e in range(1, task.epochs + 1)]))
    return out


def draw(
    task: CurveTask, curves: list, complete: int, partial: int, seed: int
) -> tuple[list[FrozenTrial], dict[int, float]]:
    """The trials of one repetition, and each one's true final running best."""
    rng = np.random.default_rng(seed)
    trials, truth = [], {}
    for number, i in enumerate(rng.choice(len(curves), complete + partial, replace=False)):
        params, curve = curves[i]
        done = number < complete
        k = task.epochs if done else int(rng.choice([r for r in RUNGS if r < task.epochs]))
        trials.append(
            FrozenTrial(
                number,
                TrialState.COMPLETE if done else TrialState.PRUNED,
                params,
                value=min(curve) if done else None,
                intermediate={e: curve[e - 1] for e in range(1, k + 1)},
            )
        )
        truth[number] = min(curve)
    return trials, truth


def score(
    task: CurveTask,
    trials: list[FrozenTrial],
    truth: dict[int, float],
    kernel: str,
    seed: int,
    scale: str = "linear",
) -> dict[str, float]:
    """The metrics of one kernel's forecasts of the stopped trials (see the module doc), the
    model on the value ``scale`` given (``pruner: gp``'s option)."""
    stopped = [t for t in trials if t.state is TrialState.PRUNED]
    y = np.array([truth[t.number] for t in stopped])
    t0 = time.perf_counter()
    within = math.nan  # ``last`` has no sd to score
    if kernel == "last":
        mean = np.array([min(t.intermediate.values()) for t in stopped])
    else:
        model = CurveModel(
            task.space, "min", torch.device("cpu"), kernel=kernel, seed=seed, scale=scale
        )
        with torch_threads(1):
            if not model.update(trials):
                raise RuntimeError(f"{task.name}: the model could not be fit (seed {seed})")
            forecasts = model.forecast(stopped)
        mean = np.array([f.mean for f in forecasts])
        within = float(np.mean(np.abs(mean - y) <= np.array([f.sd for f in forecasts])))
    seconds = time.perf_counter() - t0
    q = max(1, len(stopped) // 4)
    top = len(set(np.argsort(mean)[:q]) & set(np.argsort(y)[:q])) / q
    return {
        "rmse_over_sd": float(np.sqrt(np.mean((mean - y) ** 2)) / np.std(y)),
        "spearman": float(spearmanr(y, mean).statistic),
        "top_quarter": top,
        "within_1sd": within,
        "fit_seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(tasks()))
    ap.add_argument("--kernels", nargs="*", default=["last", *KERNELS])
    ap.add_argument("--scale", choices=SCALES, default="linear", help="the model's value scale")
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--pool", type=int, default=100, help="configurations trained per task")
    ap.add_argument("--complete", type=int, default=10)
    ap.add_argument("--partial", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "forecast.json")
    args = ap.parse_args()
    unknown = sorted(set(args.kernels) - {"last", *KERNELS})
    if unknown:
        raise SystemExit(f"--kernels: unknown {unknown}; choose from last {' '.join(KERNELS)}")
    if args.complete + args.partial > args.pool:
        raise SystemExit("--complete plus --partial must not exceed --pool")
    t0 = time.perf_counter()
    all_tasks = tasks()
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.tasks:
        task = all_tasks[name]
        curves = pool(task, args.pool)
        reps = [draw(task, curves, args.complete, args.partial, s) for s in range(args.reps)]
        print(f"\n{name}: {args.reps} draws of {args.complete} complete and {args.partial} stopped")
        print(f"  {'kernel':<14}" + "".join(f"{m:>14}" for m in METRICS))
        summary[name] = {}
        for kernel in args.kernels:
            scores = [
                score(task, tr, truth, kernel, s, args.scale) for s, (tr, truth) in enumerate(reps)
            ]
            row = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
            print(f"  {kernel:<14}" + "".join(f"{row[m]:>14.3f}" for m in METRICS), flush=True)
            # no sd to score for ``last``: null in the JSON
            summary[name][kernel] = {m: v if math.isfinite(v) else None for m, v in row.items()}
    payload = {"settings": vars(args) | {"out": str(args.out)}, "summary": summary}
    write_results(args.out, payload, t0)


if __name__ == "__main__":
    main()

"""Are ``pruner: gp``'s forecasts right where it decides? Its decisions scored against the truth.

    python -m benchmarks.run_decisions                          # every task, 10 seeds
    python -m benchmarks.run_decisions --tasks synthetic --seeds 3 --variant '{"threshold": 0.01}'
    python -m benchmarks.run_decisions --variant '{"sampler": {"thompson_every": 8}}'

``run_forecast`` scores the curve model on random draws of trials; this one scores it where it
matters, inside the studies of ``run_curves`` (ours, the same runs: the same loop, budget and
seeds). Each time the model decides on a running trial (it continues or stops at a rung), the
decision's forecast is kept: the predicted final running best (mean and sd) and the
probability that it beats the best value reported so far. Afterwards each trial's true final
running best is read from its whole curve, which costs the training of the epochs the run did
not spend: on the cached real tasks only for decisions to go on and for stops at
``--truth-from`` reports or later (8: a third of such a curve is left to train), on the
synthetic family for every decision. The curves trained join the task's cache, as
``run_curves``'s do (so ``run_forecast``, which draws from the cache, draws from more).

Per task, number of reports and decision it prints: how many decisions, the mean predicted
chance of beating the best, the share that did (a calibrated model has the two equal), and
the mean and root mean square of the standardized error ``(truth - mean) / sd`` (0 and 1 for
a calibrated model; a positive mean is an optimistic forecast). Writes
``benchmarks/results/decisions.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.curve_tasks import tasks
from benchmarks.report import run_jobs, write_results
from benchmarks.run_curves import Meter, ours, split_options

RESULTS = Path(__file__).parent / "results"


def one_run(job: tuple[str, int, int, int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The scored decisions of one run of ours (with ``options``, as ``run_curves
    --variant``'s: the pruner's, and the sampler's under ``"sampler"``)."""
    import torch

    torch.set_num_threads(1)  # one core per run, as run_curves
    task_name, seed, budget, truth_from, options = job
    task = tasks()[task_name]
    rows: list[dict[str, Any]] = []

    def watch(study: Any, trial: Any, epoch: int, stop: bool) -> None:
        d = study.pruner.last_decision
        if d is None or d.forecast is None:  # no decision here, or by rank before the model
            return
        f = d.forecast
        rows.append(
            {
                "params": dict(trial.params),
                "trial": trial.number,
                "reports": epoch,
                "stop": stop,
                "mean": f.mean,
                "sd": f.sd,
                "p_improve": f.p_improve,
                "incumbent": f.incumbent,
            }
        )

    sampler_options, pruner_options = split_options(options)
    run = ours("gp", "gp", watch=watch, sampler_options=sampler_options, **pruner_options)
    run(Meter(task, budget * task.epochs), seed)  # its loop ends when the budget is spent
    truths: dict[int, float] = {}  # per trial: read once, whatever its decisions
    for row in rows:
        params = row.pop("params")
        if task.cached and row["stop"] and row["reports"] < truth_from:
            row["truth"] = None  # too dear to train on: left out of the table
        else:
            if row["trial"] not in truths:
                curve = [task.value(params, e) for e in range(1, task.epochs + 1)]
                truths[row["trial"]] = min(curve)
            row["truth"] = truths[row["trial"]]
        row |= {"task": task_name, "seed": seed}
    return rows


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per ``task/reports/decision``: n, mean predicted chance of beating the best, the share
    that did, and the standardized error's mean and root mean square."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["truth"] is not None:
            groups[(r["task"], r["reports"], "stop" if r["stop"] else "go on")].append(r)
    out = {}
    for (task, reports, decision), g in sorted(groups.items()):
        z = np.array([(r["truth"] - r["mean"]) / max(r["sd"], 1e-12) for r in g])
        out[f"{task}/{reports}/{decision}"] = {
            "n": len(g),
            "p_improve": float(np.mean([r["p_improve"] for r in g])),
            "improved": float(np.mean([r["truth"] < r["incumbent"] for r in g])),
            "z_mean": float(z.mean()),
            "z_rms": float(np.sqrt((z**2).mean())),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(tasks()))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=30, help="full trainings per run")
    ap.add_argument("--truth-from", type=int, default=8, metavar="REPORTS")
    ap.add_argument(
        "--variant",
        default="{}",
        metavar="JSON",
        help='pruner: gp options; sampler: gp options under "sampler"',
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "decisions.json")
    args = ap.parse_args()
    unknown = sorted(set(args.tasks) - set(tasks()))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {' '.join(tasks())}")
    options = json.loads(args.variant)
    jobs = [
        (t, s, args.budget, args.truth_from, options)
        for s in range(args.first_seed, args.first_seed + args.seeds)
        for t in args.tasks
    ]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for run in run_jobs(one_run, jobs, args.workers):
        rows += run
        if run:
            print(f"  {run[0]['task']:<11} seed {run[0]['seed']}: {len(run)} decisions", flush=True)
    summary = table(rows)
    heads = ("n", "P(beats)", "beat", "z mean", "z rms")
    print("\n" + f"{'task/reports/decision':<28}" + "".join(f"{h:>9}" for h in heads))
    for key, s in summary.items():
        print(
            f"{key:<28}{s['n']:>9}{s['p_improve']:>9.3f}{s['improved']:>9.3f}"
            f"{s['z_mean']:>+9.2f}{s['z_rms']:>9.2f}"
        )
    settings = vars(args) | {"out": str(args.out), "variant": options}
    write_results(args.out, {"settings": settings, "summary": summary, "decisions": rows}, t0)


if __name__ == "__main__":
    main()

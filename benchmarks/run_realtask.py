"""Real-task leg: tune a small network on real data, ours against Optuna TPE, Optuna's
GPSampler and a standard BoTorch loop, over the same seeds, with a paired comparison.

    python -m benchmarks.run_realtask                  # 30 trials x 10 seeds x 4 optimizers
    python -m benchmarks.run_realtask --seeds 3 --optimizers ours_gp optuna_tpe

The task: an MLP (depth 1-3, width 16-256, ReLU, dropout) on scikit-learn's ``load_digits``
(ships with the package: no download), trained with SGD + Nesterov momentum and a cosine
schedule for 10 epochs; the objective is the cross-entropy on a fixed 30% validation split.
Seven parameters: ``lr`` (log), ``momentum``, ``weight_decay`` (log), ``dropout``, ``width``
(int, log), ``depth`` (int), ``batch_size`` (categorical). Training is seeded and
single-threaded, so the objective is a fixed function of the parameters (a seeded training
run), and each result is cached by its parameters under
``benchmarks/.cache/realtask-<task hash>.jsonl``, so a rerun costs only the optimizers.

Prints the median, quartiles and worst seed of the best validation loss at 10, 20 and 30 trials
for each optimizer, then for each peer the paired comparison with ours (wins / ties / losses
over the seeds, the median per-seed difference, and a two-sided Wilcoxon signed-rank p-value),
and writes ``benchmarks/results/realtask.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.curve_tasks import digits, epochs_of, mlp_sgd, param_key
from benchmarks.optimizers import OPTIMIZERS, available
from benchmarks.problems import Problem
from benchmarks.report import paired, run_jobs, write_results
from torchtune_hp.space import Categorical, Float, Int, Space

RESULTS = Path(__file__).parent / "results"
SPACE = Space(
    {
        "lr": Float(1e-3, 1.0, log=True),
        "momentum": Float(0.0, 0.99),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout": Float(0.0, 0.6),
        "width": Int(16, 256, log=True),
        "depth": Int(1, 3),
        "batch_size": Categorical([32, 64, 128, 256]),
    }
)
EPOCHS = 10
# The cache is keyed by the task's definition too: changing the space or the epochs starts anew.
TASK = zlib.crc32(repr((sorted(SPACE.tunable.items()), EPOCHS)).encode())
CACHE = Path(__file__).parent / ".cache" / f"realtask-{TASK:08x}.jsonl"


@lru_cache(maxsize=1)
def _cached() -> dict[str, float]:
    out: dict[str, float] = {}
    if CACHE.exists():
        for line in CACHE.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interrupted run
                continue
            out[row["key"]] = row["value"]
    return out


def train(params: dict[str, Any]) -> float:
    """Validation cross-entropy of one seeded training run (inf when it diverges)."""
    key = param_key(params)
    if key in _cached():
        return _cached()[key]
    import torch

    model, opt = mlp_sgd(params)
    bs = params["batch_size"]
    steps = EPOCHS * ((len(digits()[1]) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    curve = epochs_of(model, opt, bs, (64,), after_step=sched.step)
    value = [next(curve) for _ in range(EPOCHS)][-1]
    value = value if np.isfinite(value) else float("inf")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with CACHE.open("a") as f:  # one short line per write: appends from workers do not mix
        f.write(json.dumps({"key": key, "value": value}) + "\n")
    _cached()[key] = value
    return value


def objective(params: dict[str, Any]) -> float:
    """What the optimizers see: a diverged run counts as a large finite loss (peers that
    cannot take inf get the value a user would clip to)."""
    return min(train(params), 10.0)


PROBLEM = Problem("digits_mlp_sgd", SPACE, objective, 0.0, 30, kind="real")


def one_run(job: tuple[str, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    opt_name, seed, budget = job
    t0 = time.perf_counter()
    params = OPTIMIZERS[opt_name](PROBLEM, seed, budget)[:budget]
    values = [objective(p) for p in params]
    return {
        "optimizer": opt_name,
        "seed": seed,
        "best_curve": np.minimum.accumulate(values).tolist(),
        "best_params": params[int(np.argmin(values))],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--optimizers", nargs="*", default=["ours_gp", "optuna_tpe", "optuna_gp", "botorch_logei"]
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "realtask.json")
    args = ap.parse_args()
    opts = [o for o in args.optimizers if available(o)]
    for o in set(args.optimizers) - set(opts):
        print(f"skipped {o}: its package is not installed (see the README's Benchmarks)")
    jobs = [(o, s, args.budget) for s in range(args.seeds) for o in opts]
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = list(run_jobs(one_run, jobs, args.workers))
    marks = [m for m in (10, 20, 30) if m <= args.budget] or [args.budget]
    finals: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    print(f"\n{PROBLEM.name}: best validation loss, {args.seeds} seeds")
    print(f"  {'optimizer':<14}" + "".join(f"{'@' + str(m):>26}" for m in marks) + f"{'worst':>9}")
    for o in opts:
        rs = sorted((r for r in runs if r["optimizer"] == o), key=lambda r: r["seed"])
        row: dict[str, Any] = {}
        cells = []
        for m in marks:
            vals = np.array([r["best_curve"][m - 1] for r in rs])
            q25, med, q75 = np.percentile(vals, [25, 50, 75])
            row[f"@{m}"] = {"median": float(med), "q25": float(q25), "q75": float(q75)}
            cells.append(f"{med:.4f} [{q25:.4f},{q75:.4f}]")
        finals[o] = np.array([r["best_curve"][-1] for r in rs])
        row["worst"] = float(finals[o].max())
        row["seconds"] = float(np.median([r["seconds"] for r in rs]))
        summary[o] = row
        print(f"  {o:<14}" + "".join(f"{c:>26}" for c in cells) + f"{row['worst']:9.4f}")
    comparisons = {}
    if "ours_gp" in finals:
        print("\npaired with ours_gp over the same seeds (final best; diff = ours - peer)")
        for o in opts:
            if o == "ours_gp":
                continue
            c = paired(finals["ours_gp"], finals[o])
            comparisons[o] = c
            print(
                f"  vs {o:<14} wins {c['wins']:>2} ties {c['ties']:>2} losses {c['losses']:>2}"
                f"  median diff {c['median_diff']:+.4f}  Wilcoxon p {c['wilcoxon_p']:.3f}"
            )
    write_results(args.out, {"summary": summary, "paired": comparisons, "runs": runs}, t0)


if __name__ == "__main__":
    main()

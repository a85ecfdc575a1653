"""Regret benchmark: every optimizer on every problem over several seeds, side by side.

    python -m benchmarks.run_regret                       # all problems, all optimizers, 5 seeds
    python -m benchmarks.run_regret --problems branin --optimizers ours_gp_logei optuna_gp

Prints median [IQR] simple regret at 25/50/100% of each problem's budget and writes
``benchmarks/results/regret.json``. Peers need the ``bench`` extra; missing ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.optimizers import OPTIMIZERS, available, regret_curve
from benchmarks.problems import PROBLEMS

RESULTS = Path(__file__).parent / "results"


def one_run(job: tuple[str, str, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one core per run; runs go side by side
    problem_name, opt_name, seed = job
    problem = PROBLEMS[problem_name]
    t0 = time.perf_counter()
    params = OPTIMIZERS[opt_name](problem, seed, problem.budget)[: problem.budget]
    curve = regret_curve(problem, params)
    return {
        "problem": problem_name,
        "optimizer": opt_name,
        "seed": seed,
        "curve": curve.tolist(),
        "seconds": time.perf_counter() - t0,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        out.setdefault(r["problem"], {}).setdefault(r["optimizer"], []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for prob, by_opt in out.items():
        budget = PROBLEMS[prob].budget
        for opt, rs in by_opt.items():
            row = {}
            for frac in (0.25, 0.5, 1.0):
                k = max(1, round(frac * budget))
                vals = np.array([r["curve"][min(k, len(r["curve"])) - 1] for r in rs])
                q25, med, q75 = np.percentile(vals, [25, 50, 75])
                row[f"{int(frac * 100)}%"] = {"median": med, "q25": q25, "q75": q75}
            row["seconds"] = float(np.median([r["seconds"] for r in rs]))
            row["seeds"] = len(rs)
            table.setdefault(prob, {})[opt] = row
    return table


def print_table(table: dict[str, dict[str, Any]]) -> None:
    for prob, rows in table.items():
        print(f"\n{prob} (budget {PROBLEMS[prob].budget}): median [IQR] simple regret")
        print(f"  {'optimizer':<15} {'25%':>22} {'50%':>22} {'100%':>22} {'s/run':>7}")
        best = min(r["100%"]["median"] for r in rows.values())
        for opt, r in sorted(rows.items(), key=lambda kv: kv[1]["100%"]["median"]):
            cells = [
                f"{r[c]['median']:.3g} [{r[c]['q25']:.2g},{r[c]['q75']:.2g}]"
                for c in ("25%", "50%", "100%")
            ]
            mark = " *" if r["100%"]["median"] == best else ""
            print(
                f"  {opt:<15} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
                f"{r['seconds']:>7.1f}{mark}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    ap.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "regret.json")
    args = ap.parse_args()
    opts = [o for o in args.optimizers if available(o)]
    for o in set(args.optimizers) - set(opts):
        print(f"skipped {o}: its package is not installed (pip install -e '.[bench]')")
    jobs = [(p, o, s) for p in args.problems for o in opts for s in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(one_run, jobs))
    table = summarize(runs)
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "wall_seconds": time.perf_counter() - t0,
                "summary": table,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

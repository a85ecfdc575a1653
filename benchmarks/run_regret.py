"""Regret benchmark: every optimizer on every problem over several seeds, side by side.

    python -m benchmarks.run_regret                       # all problems, default optimizers
    python -m benchmarks.run_regret --problems branin --optimizers ours_gp optuna_gp
    python -m benchmarks.run_regret --variant ucb='{"acquisition": "ucb"}' --optimizers ours_gp
    python -m benchmarks.run_regret --rescore benchmarks/results/regret.json x.json \\
        --me variant:ucb                                  # score earlier runs, run nothing
    python -m benchmarks.run_regret --first-seed 5 --optimizers ours_gp \\
        --variant off='{"endgame": 0}'        # held-out seeds 5-9, ours with and without

Prints, per problem, the median simple regret at 25/50/100% of the budget and the worst seed's
final regret, then a scorecard of ``ours_gp`` against the best peer on each problem, and writes
``benchmarks/results/regret.json``.

A peer's run is a fixed function of (problem, seed, budget, its package version), so each one
is cached under ``benchmarks/.cache/regret/`` as it finishes and reused by later runs
(``--no-cache`` recomputes, ``--only-cached`` reports the cached peer runs and skips the
rest; ``--peers-from benchmarks/results/regret.json`` files the committed peer runs there
first); ours (``ours_*`` and ``--variant``) always runs afresh. An interrupted benchmark
therefore resumes where it stopped. Slow peers can run on fewer seeds
(``--seeds-for hebo=3``); the table shows each row's seed count.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.optimizers import OPTIMIZERS, PEER_PACKAGES, available, ours, regret_curve
from benchmarks.problems import PROBLEMS
from benchmarks.report import (
    count_interval,
    file_runs,
    lead_chance,
    read_runs,
    run_jobs,
    store,
    write_results,
)

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache" / "regret"
# grid is a baseline for users, not for these continuous spaces; bayes_opt was never within
# reach of the leaders here and costs 20-60 s a run; ours_gp_* are options and former
# defaults, each with its committed runs: all stay available by name. The default run is ours
# against the peers: eight optimizers.
DEFAULT = [o for o in OPTIMIZERS if not o.startswith("ours_gp_") and o not in ("grid", "bayes_opt")]
DIST = {"skopt": "scikit-optimize", "bayes_opt": "bayesian-optimization"}


def is_ours(optimizer: str) -> bool:
    """Ours: ``ours_*`` and ``--variant`` runs (never cached, never a peer)."""
    return optimizer.startswith(("ours", "variant:"))


def cache_path(problem: str, optimizer: str, seed: int) -> Path | None:
    """Where a peer's run is kept; None for ours (never cached)."""
    if is_ours(optimizer):
        return None
    pkg = PEER_PACKAGES.get(optimizer)
    version = importlib.metadata.version(DIST.get(pkg, pkg)) if pkg else "builtin"
    budget = PROBLEMS[problem].budget
    return CACHE / f"{optimizer}-{version}" / problem / f"seed{seed}_budget{budget}.json"


def _missing(problem: str, optimizer: str, seed: int) -> bool:
    path = cache_path(problem, optimizer, seed)
    return path is not None and not path.exists()


RUN_KEYS = ("problem", "optimizer", "seed", "curve", "seconds")  # what a cached run holds


def cache_from(results: Path) -> int:
    """``--peers-from``: file the peer runs of an earlier results JSON (such as the committed
    ``benchmarks/results/regret.json``) in the run cache, so a fresh checkout compares ours
    against them without running the peers again (HEBO takes minutes a run here); see
    :func:`benchmarks.report.file_runs`. A run of a problem this benchmark does not have, or
    of another budget, is left out."""

    def path_of(r: dict[str, Any]) -> Path | None:
        problem, opt = PROBLEMS.get(r["problem"]), r["optimizer"]
        if problem is None or len(r["curve"]) != problem.budget:
            return None
        if opt not in OPTIMIZERS or not available(opt):
            return None
        return cache_path(r["problem"], opt, r["seed"])

    return file_runs(results, "run_regret", path_of, RUN_KEYS)


def one_run(job: tuple[str, str, int, dict[str, Any] | None, bool]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one core per run; runs go side by side
    problem_name, opt_name, seed, options, use_cache = job
    path = cache_path(problem_name, opt_name, seed)
    if use_cache and path is not None and path.exists():
        return json.loads(path.read_text()) | {"cached": True}
    problem = PROBLEMS[problem_name]
    run = ours("gp", **options) if options is not None else OPTIMIZERS[opt_name]
    t0 = time.perf_counter()
    params = run(problem, seed, problem.budget)[: problem.budget]
    out = {
        "problem": problem_name,
        "optimizer": opt_name,
        "seed": seed,
        "curve": regret_curve(problem, params).tolist(),
        "seconds": time.perf_counter() - t0,
    }
    if path is not None:
        store(path, out)
    return out


def at(curve: list[float], frac: float, budget: int) -> float:
    k = max(1, round(frac * budget))
    return curve[min(k, len(curve)) - 1]


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        grouped.setdefault(r["problem"], {}).setdefault(r["optimizer"], []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for prob, by_opt in grouped.items():
        budget = PROBLEMS[prob].budget
        for opt, rs in by_opt.items():
            row: dict[str, Any] = {}
            for frac in (0.25, 0.5, 1.0):
                vals = np.array([at(r["curve"], frac, budget) for r in rs])
                q25, med, q75 = np.percentile(vals, [25, 50, 75])
                row[f"{int(frac * 100)}%"] = {
                    "median": float(med),
                    "q25": float(q25),
                    "q75": float(q75),
                }
            row["finals"] = [r["curve"][-1] for r in sorted(rs, key=lambda r: r["seed"])]
            row["worst"] = float(max(row["finals"]))
            row["seconds"] = float(np.median([r["seconds"] for r in rs]))
            row["seeds"] = len(rs)
            table.setdefault(prob, {})[opt] = row
    return table


def scorecard(table: dict[str, dict[str, Any]], me: str) -> dict[str, Any]:
    """``me`` against the peers (every other optimizer except ours and random/sobol/grid) on
    each problem: the issue's targets, measured."""
    rows = {}
    for prob, opts in table.items():
        if me not in opts:
            continue
        peers = {
            o: r for o, r in opts.items() if not is_ours(o) and o not in ("random", "sobol", "grid")
        }
        if not peers:
            continue
        mine = opts[me]["100%"]["median"]
        best_peer, best = min(
            ((o, r["100%"]["median"]) for o, r in peers.items()), key=lambda t: t[1]
        )
        rand = opts.get("random", {}).get("100%", {}).get("median")
        rows[prob] = {
            "kind": PROBLEMS[prob].kind,
            "ours": float(mine),
            "best_peer": best_peer,
            "best_peer_median": best,
            "ratio": mine / best if best > 0 else (1.0 if mine <= 0 else float("inf")),
            "best": bool(mine <= best),
            "lead_chance": lead_chance(opts[me]["finals"], [r["finals"] for r in peers.values()]),
            "worst_seed": opts[me]["worst"],
            "random_median": rand,
            "worst_seed_beats_random": None if rand is None else bool(opts[me]["worst"] <= rand),
        }
    n = len(rows)
    chances = [r["lead_chance"] for r in rows.values()]
    return {
        "problems": rows,
        "best_on": sum(r["best"] for r in rows.values()),
        "of": n,
        "expected_best_on": float(sum(chances)),
        "best_on_5_95": list(count_interval(chances)),
        "max_ratio": max((r["ratio"] for r in rows.values()), default=float("nan")),
    }


def print_table(table: dict[str, dict[str, Any]]) -> None:
    for prob, rows in table.items():
        pr = PROBLEMS[prob]
        print(f"\n{prob} ({pr.kind}, budget {pr.budget}): median simple regret, worst seed")
        head = ("25%", "50%", "100%", "worst")
        print(f"  {'optimizer':<22} " + " ".join(f"{h:>9}" for h in head) + "  seeds   s/run")
        best = min(r["100%"]["median"] for r in rows.values())
        for opt, r in sorted(rows.items(), key=lambda kv: kv[1]["100%"]["median"]):
            cells = [f"{r[c]['median']:9.3g}" for c in ("25%", "50%", "100%")]
            mark = " *" if r["100%"]["median"] == best else ""
            print(
                f"  {opt:<22} {' '.join(cells)} {r['worst']:9.3g} {r['seeds']:>5} "
                f"{r['seconds']:>7.1f}{mark}"
            )


def print_scorecard(card: dict[str, Any], me: str) -> None:
    print(f"\nscorecard for {me}: final median regret vs the best peer")
    head = f"{'ours':>9} {'best peer':>22} {'ratio':>6} {'P(lead)':>7} {'worst':>9} {'random':>9}"
    print(f"  {'problem':<22} {'kind':<8} {head}")
    for prob, r in card["problems"].items():
        peer = f"{r['best_peer']} {r['best_peer_median']:.3g}"
        rand = "-" if r["random_median"] is None else f"{r['random_median']:.3g}"
        flag = "" if r["worst_seed_beats_random"] in (True, None) else "  worst seed > random"
        print(
            f"  {prob:<22} {r['kind']:<8} {r['ours']:9.3g} {peer:>22} {r['ratio']:6.2f} "
            f"{r['lead_chance']:7.2f} {r['worst_seed']:9.3g} {rand:>9}{flag}"
        )
    low, high = card["best_on_5_95"]
    print(
        f"  best median on {card['best_on']} of {card['of']}; largest ratio {card['max_ratio']:.2f}"
    )
    print(
        f"  on seeds drawn again (bootstrap, P(lead) above): best on {card['expected_best_on']:.1f}"
        f" of {card['of']} expected, {low} to {high} in 90% of draws"
    )


def rescore(paths: list[Path], me: str) -> None:
    """``--rescore``: the runs of earlier results files (a variant's beside the committed
    peers', say) summarized and scored as one run would have been."""
    table = summarize(read_runs(paths, "run_regret"))
    print_table(table)
    card = scorecard(table, me)
    if not card["problems"]:
        raise SystemExit(f"--rescore: no runs of {me!r} beside a peer's in {paths}")
    print_scorecard(card, me)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    ap.add_argument("--optimizers", nargs="*", default=DEFAULT)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds FIRST .. FIRST+N-1 (e.g. 5: held-out seeds for a change chosen on 0-4)",
    )
    ap.add_argument("--seeds-for", nargs="*", default=[], metavar="OPT=N")
    ap.add_argument(
        "--variant",
        nargs="*",
        action="extend",  # --variant a=.. b=.. and --variant a=.. --variant b=.. alike
        default=[],
        metavar="NAME=JSON",
        help='ours with these gp options, e.g. ucb=\'{"acquisition": "ucb"}\'',
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument(
        "--only-cached",
        action="store_true",
        help="peers: use the cached runs and skip the rest (ours still runs)",
    )
    ap.add_argument(
        "--peers-from",
        type=Path,
        metavar="JSON",
        help="take the peer runs of this results file instead of running them",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "regret.json")
    ap.add_argument(
        "--rescore",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: print the table and scorecard of these results files' runs together",
    )
    ap.add_argument(
        "--me",
        default="ours_gp",
        help="the optimizer the scorecard is for (with --rescore), e.g. variant:eg",
    )
    args = ap.parse_args()
    if args.rescore:
        rescore(args.rescore, args.me)
        return
    if args.peers_from is not None:
        try:
            print(f"{cache_from(args.peers_from)} runs taken from {args.peers_from}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"--peers-from: {e}") from e
    opts = [o for o in args.optimizers if available(o)]
    for o in set(args.optimizers) - set(opts):
        print(f"skipped {o}: its package is not installed (see the README's Benchmarks)")
    seeds = {o: args.seeds for o in opts} | {
        o: int(n) for o, n in (kv.split("=", 1) for kv in args.seeds_for)
    }
    options: dict[str, dict[str, Any] | None] = {o: None for o in opts}
    for kv in args.variant:
        name, spec = kv.split("=", 1)
        options[f"variant:{name}"] = json.loads(spec)
        seeds.setdefault(f"variant:{name}", args.seeds)
    # Seed-major order, the optimizers given fewer seeds (the slow ones) last, so an
    # interrupted run has every problem at its first seeds.
    jobs = sorted(
        (
            (p, o, s, opt_options, not args.no_cache)
            for s in range(args.first_seed, args.first_seed + max(seeds.values(), default=0))
            for p in args.problems
            for o, opt_options in options.items()
            if s - args.first_seed < seeds[o] and not (args.only_cached and _missing(p, o, s))
        ),
        key=lambda job: (seeds[job[1]] < args.seeds, job[2]),
    )
    t0 = time.perf_counter()
    runs = list(run_jobs(one_run, jobs, args.workers))
    table = summarize(runs)
    print_table(table)
    card = scorecard(table, "ours_gp") if "ours_gp" in opts else None
    if card:
        print_scorecard(card, "ours_gp")
    write_results(args.out, {"summary": table, "scorecard": card, "runs": runs}, t0)


if __name__ == "__main__":
    main()

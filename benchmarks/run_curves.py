"""Multi-fidelity leg: the best validation loss found against the training epochs consumed.

    python -m benchmarks.run_curves                      # every task and method, 5 seeds
    python -m benchmarks.run_curves --tasks synthetic --methods ours_mf gp_asha --seeds 3
    python -m benchmarks.run_curves --seeds 3 --peers-from benchmarks/results/curves.json
    python -m benchmarks.run_curves --tasks synthetic --first-seed 5 --out /tmp/held_out.json
    python -m benchmarks.run_curves --tasks synthetic --seeds 10 --peers-from \
        benchmarks/results/curves.json benchmarks/results/curves_seeds5-9.json
    python -m benchmarks.run_curves --rescore benchmarks/results/curves.json \
        benchmarks/results/curves_seeds5-9.json       # summarize committed runs, run nothing

Each method tunes a task (see :mod:`benchmarks.curve_tasks`) one trial at a time, on a budget
of ``--budget`` full trainings (``budget * epochs`` epochs). Every epoch any method trains is
charged, whether the trial later goes on, stops, or (DEHB) is a lower-fidelity run from
scratch; the anytime curve is the lowest validation loss seen after each charged epoch.

Methods, each with the settings its documentation shows a user:

* ``ours_mf``: ``sampler: gp`` with ``pruner: gp`` (the learning-curve GP decides).
* ``ours_ft``: the same with ``resume: true`` (freeze-thaw: a stopped trial is paused, and the
  model may later resume it from its checkpoint rather than start a new configuration).
* ``gp``: ``sampler: gp``, no pruning. ``gp_asha`` / ``random_asha``: with ``pruner: asha``
  (``min_resource: 1``, ``eta: 3``; random + ASHA is what a Ray Tune user gets by default).
* ``optuna_tpe_hb``: Optuna's TPESampler with its HyperbandPruner (``min_resource=1``,
  ``reduction_factor=3``).
* ``dehb``: DEHB 0.1.2 (differential evolution over Hyperband brackets, ``eta=3``,
  fidelities 1 to ``epochs``); each of its runs trains from scratch to its fidelity.
* ``syne_mobster`` / ``syne_hypertune``: Syne Tune 0.13's MOBSTER (a GP over configuration x
  epoch driving asynchronous successive halving) and Hyper-Tune, stopping variant. Syne Tune
  0.14 and later no longer ship them; 0.13 installs with ``--no-deps`` (see the README).

Peer runs are cached per (task, method, seed, budget, package version) under
``benchmarks/.cache/curves-runs/``; ours always runs again. Prints, per task, each method's
median best loss (and quartiles) at 5, 10, 20 and 30 full trainings, the epochs ours needs to
reach the quality ``gp`` without pruning has at 30 full trainings, and writes
``benchmarks/results/curves.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.curve_tasks import CurveTask, tasks
from benchmarks.report import (
    count_interval,
    file_runs,
    lead_chance,
    paired,
    read_runs,
    run_jobs,
    store,
    write_results,
)
from torchtune_hp.space import Float, Int

RESULTS = Path(__file__).parent / "results"
RUN_CACHE = Path(__file__).parent / ".cache" / "curves-runs"
MARKS = (5, 10, 20, 30)
PAIRED_MARKS = (10, 30)  # the budgets the README's targets name, compared seed by seed


Watch = Callable[[Any, Any, int, bool], None]  # (study, trial, epoch, stopped): see ours()


class BudgetSpent(Exception):
    """The method has used its epochs; the run ends here."""


class Meter:
    """Charges epochs and keeps the anytime curve: ``trace[k]`` is the best loss seen after
    ``k + 1`` epochs. Where the task knows its noise-free losses (``task.exact``),
    ``true_trace[k]`` is what the configuration and epoch behind ``trace[k]`` (the one a user
    would pick) are really worth: a best loss seen can be a lucky noise draw, and a method
    that trains more epochs near the optimum sees more of them."""

    def __init__(self, task: CurveTask, budget_epochs: int) -> None:
        self.task = task
        self.budget = budget_epochs
        self.trace: list[float] = []
        self.true_trace: list[float] = []
        self.trials = 0

    def epoch(self, params: dict[str, Any], e: int) -> float:
        """Train ``params`` to epoch ``e`` (charging one epoch) and return its loss."""
        if len(self.trace) >= self.budget:
            raise BudgetSpent
        v = self.task.value(params, e)
        improved = not self.trace or v < self.trace[-1]
        self.trace.append(v if improved else self.trace[-1])
        if self.task.exact is not None:
            self.true_trace.append(self.task.exact(params, e) if improved else self.true_trace[-1])
        return v

    def curve_to(self, params: dict[str, Any], fidelity: int) -> list[float]:
        """Train from scratch to ``fidelity`` epochs, charging each (DEHB's runs)."""
        return [self.epoch(params, e) for e in range(1, fidelity + 1)]


def run_study_loop(
    meter: Meter,
    ask: Callable[[], tuple[Any, dict[str, Any]]],
    report: Callable[[Any, float, int], bool],
    finish: Callable[[Any, float | None, bool], None],
    resumed: Callable[[Any], tuple[int, float]] = lambda handle: (0, math.inf),
) -> None:
    """One trial at a time: ``ask`` a configuration, train it epoch by epoch, ``report``
    each loss (True = stop it; not asked after the last epoch), ``finish`` it with its best
    loss (pruned or complete). A paused trial that ``ask`` hands out again goes on after the
    epoch and with the best loss ``resumed`` says (from its checkpoint: those epochs are not
    charged again)."""
    t_max = meter.task.epochs
    while True:
        handle, params = ask()
        done, best = resumed(handle)
        try:
            for e in range(done + 1, t_max + 1):
                v = meter.epoch(params, e)
                best = min(best, v)
                if report(handle, v, e) and e < t_max:
                    finish(handle, best, True)
                    break
            else:
                finish(handle, best, False)
        except BudgetSpent:
            finish(handle, None, True)
            return
        meter.trials += 1


def ours(
    sampler: str,
    pruner: str,
    *,
    watch: Watch | None = None,
    sampler_options: dict[str, Any] | None = None,
    **pruner_options: Any,
) -> Callable[[Meter, int], None]:
    """Our study one trial at a time; ``watch(study, trial, epoch, stop)`` sees each report's
    pruning decision (:mod:`benchmarks.run_decisions` records the pruner's forecasts)."""

    def run(meter: Meter, seed: int) -> None:
        from torchtune_hp import Study

        study = Study(
            "bench",
            meter.task.space,
            sampler=sampler,
            pruner=pruner,
            pruner_options=pruner_options,
            sampler_options=sampler_options,
            seed=seed,
            logdir=None,
        )

        def ask() -> tuple[Any, dict[str, Any]]:
            t = study.ask()
            return t, t.params

        def report(t: Any, v: float, e: int) -> bool:
            study.report(t, v, step=e)
            stop = e < meter.task.epochs and study.should_prune(t)
            if watch is not None:
                watch(study, t, e, stop)
            return stop

        def finish(t: Any, best: float | None, pruned: bool) -> None:
            study.tell(t, best, state="pruned" if pruned else None)

        def resumed(t: Any) -> tuple[int, float]:
            if t.resume_from is None:
                return 0, math.inf
            return t.resume_from, min(study.trial(t.number).intermediate.values())

        run_study_loop(meter, ask, report, finish, resumed)

    return run


def optuna_tpe_hb(meter: Meter, seed: int) -> None:
    import optuna

    from benchmarks.optimizers import optuna_distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=meter.task.epochs, reduction_factor=3
        ),
    )
    dists = optuna_distributions(meter.task.space)

    def ask() -> tuple[Any, dict[str, Any]]:
        t = study.ask(dists)
        return t, meter.task.space.validate(t.params)

    def report(t: Any, v: float, e: int) -> bool:
        t.report(v, e)
        return e < meter.task.epochs and t.should_prune()

    def finish(t: Any, best: float | None, pruned: bool) -> None:
        if pruned:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, best)

    run_study_loop(meter, ask, report, finish)


def dehb_run(meter: Meter, seed: int) -> None:
    """DEHB's ask/tell loop; fidelities (floats: 1.33, 4, 12 for 12 epochs) are rounded to
    whole epochs, and each job trains from scratch to its fidelity; fitness is the job's best
    loss, as for every method here."""
    import tempfile
    import warnings

    import ConfigSpace as CS
    from dehb import DEHB
    from loguru import logger

    space = meter.task.space
    cs = CS.ConfigurationSpace(seed=seed)
    for name, p in space.tunable.items():
        if isinstance(p, Float):
            cs.add(CS.Float(name, (p.low, p.high), log=p.log))
        elif isinstance(p, Int):
            cs.add(CS.Integer(name, (p.low, p.high), log=p.log))
        else:
            cs.add(CS.Categorical(name, list(p.choices)))
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dehb = DEHB(
            cs=cs,
            f=None,
            dimensions=len(cs),
            min_fidelity=1,
            max_fidelity=meter.task.epochs,
            eta=3,
            seed=seed,
            n_workers=1,
            output_path=out,
            save_freq="end",
            log_level="WARNING",
        )
        logger.remove()  # DEHB's stdout and log-file sinks
        while True:
            job = dehb.ask()
            params = space.validate(_plain(dict(job["config"])))
            losses = meter.curve_to(params, max(1, int(round(job["fidelity"]))))
            dehb.tell(job, {"fitness": float(min(losses)), "cost": float(len(losses))})
            meter.trials += 1


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars from a peer's config as Python numbers."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}


def syne_tune(kind: str) -> Callable[[Meter, int], None]:
    """Syne Tune 0.13's MOBSTER or Hyper-Tune (``type="stopping"``, ``grace_period=1``,
    ``reduction_factor=3``), its scheduler driven by hand one trial at a time: ``suggest``,
    then ``on_trial_result`` per epoch until it says stop (the Tuner does the same through a
    backend). Its GP's initialization draws from numpy's global generator, seeded too."""

    def run(meter: Meter, seed: int) -> None:
        import random
        from datetime import datetime

        from syne_tune.backend.trial_status import Trial
        from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform
        from syne_tune.optimizer.baselines import MOBSTER, HyperTune
        from syne_tune.optimizer.scheduler import SchedulerDecision

        space, t_max = meter.task.space, meter.task.epochs
        config_space: dict[str, Any] = {"epochs": t_max}
        for name, p in space.tunable.items():
            if isinstance(p, Float):
                config_space[name] = (loguniform if p.log else uniform)(p.low, p.high)
            elif isinstance(p, Int):
                config_space[name] = (lograndint if p.log else randint)(p.low, p.high)
            else:
                config_space[name] = choice(list(p.choices))
        options: dict[str, Any] = {"brackets": 3} if kind == "hypertune" else {}
        np.random.seed(seed)
        random.seed(seed)
        scheduler = (HyperTune if kind == "hypertune" else MOBSTER)(
            config_space,
            metric="loss",
            mode="min",
            resource_attr="epoch",
            max_resource_attr="epochs",
            type="stopping",
            grace_period=1,
            reduction_factor=3,
            random_seed=seed,
            **options,
        )
        number = 0
        while True:
            suggestion = scheduler.suggest(number)
            if suggestion is None:
                return
            trial = Trial(trial_id=number, config=suggestion.config, creation_time=datetime.now())
            scheduler.on_trial_add(trial)
            number += 1
            config = {k: v for k, v in suggestion.config.items() if k != "epochs"}
            params = space.validate(_plain(config))
            for e in range(1, t_max + 1):
                result = {"loss": meter.epoch(params, e), "epoch": e}
                if scheduler.on_trial_result(trial, result) != SchedulerDecision.CONTINUE:
                    scheduler.on_trial_remove(trial)
                    break
            else:
                scheduler.on_trial_complete(trial, result)
            meter.trials += 1

    return run


METHODS: dict[str, Callable[[Meter, int], None]] = {
    "ours_mf": ours("gp", "gp"),
    "ours_ft": ours("gp", "gp", resume=True),
    "gp": ours("gp", "none"),
    "gp_asha": ours("gp", "asha", min_resource=1, eta=3),
    "random_asha": ours("random", "asha", min_resource=1, eta=3),
    "optuna_tpe_hb": optuna_tpe_hb,
    "dehb": dehb_run,
    "syne_mobster": syne_tune("mobster"),
    "syne_hypertune": syne_tune("hypertune"),
}
PEER_PACKAGES = {"optuna_tpe_hb": "optuna", "dehb": "dehb", "syne_mobster": "syne-tune"}
PEER_PACKAGES["syne_hypertune"] = "syne-tune"


def is_ours(method: str) -> bool:
    """The method under test (never cached); the baselines built from our samplers and
    pruners are cached like peers, under our package's version (``--no-cache`` reruns)."""
    return method.startswith("ours")


def available(method: str) -> bool:
    pkg = PEER_PACKAGES.get(method)
    if pkg is None:
        return True
    try:
        importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cache_path(task: str, method: str, seed: int, budget: int) -> Path | None:
    if is_ours(method):
        return None
    pkg = PEER_PACKAGES.get(method, "torchtune-hp")
    version = importlib.metadata.version(pkg)
    return RUN_CACHE / f"{method}-{version}" / task / f"seed{seed}_budget{budget}.json"


RUN_KEYS = ("task", "method", "seed", "trace", "trials", "seconds")  # what a cached run holds


def cache_from(results: Path, budget: int) -> int:
    """``--peers-from``: file the baseline and peer runs of an earlier results JSON (such as
    the committed ``benchmarks/results/curves.json``) in the run cache, so a fresh checkout
    compares ours against them without running the peers again (MOBSTER alone takes about 20
    minutes a seed here); see :func:`benchmarks.report.file_runs`. Raises ValueError naming
    the file when its runs have another budget."""

    def check(data: dict[str, Any]) -> None:
        if data.get("budget") != budget:
            raise ValueError(
                f"{results}: its runs have a budget of {data.get('budget')} full trainings, "
                f"this run {budget} (--budget)"
            )

    def path_of(r: dict[str, Any]) -> Path | None:
        if r["method"] not in METHODS or not available(r["method"]):
            return None
        return cache_path(r["task"], r["method"], r["seed"], budget)

    return file_runs(results, "run_curves", path_of, RUN_KEYS, check, optional=("true_trace",))


BUILT_IN = frozenset(METHODS)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A variant's options as ``(sampler options or None, pruner options)``: ``sampler: gp``
    options under a ``"sampler"`` key, the rest ``pruner: gp``'s."""
    pruner_options = dict(options)
    return pruner_options.pop("sampler", None), pruner_options


def variant_options(spec: str) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """``NAME=JSON`` as ``(ours_NAME, sampler options or None, pruner options)``."""
    name, _, options = spec.partition("=")
    return (f"ours_{name}", *split_options(json.loads(options)))


def variant(spec: str) -> str:
    """``--variant NAME=JSON``: ours_mf with other ``pruner: gp`` options, as ``ours_NAME``;
    a ``"sampler"`` key holds ``sampler: gp`` options (``'te8={"sampler": {"thompson_every":
    8}}'``)."""
    name, sampler_options, pruner_options = variant_options(spec)
    if name in BUILT_IN:  # its runs would be summarized with the built-in method's
        raise SystemExit(f"--variant {spec}: {name} is a built-in method; name it otherwise")
    METHODS[name] = ours("gp", "gp", sampler_options=sampler_options, **pruner_options)
    return name


def one_run(job: tuple[str, str, int, int, bool, list[str]]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one core per run; runs go side by side
    task_name, method, seed, budget, use_cache, variants = job
    for spec in variants:  # a worker process rebuilds the variants
        variant(spec)
    path = cache_path(task_name, method, seed, budget)
    if use_cache and path is not None and path.exists():
        return json.loads(path.read_text()) | {"cached": True}
    task = tasks()[task_name]
    meter = Meter(task, budget * task.epochs)
    t0 = time.perf_counter()
    try:
        METHODS[method](meter, seed)
    except BudgetSpent:
        pass
    out = {
        "task": task_name,
        "method": method,
        "seed": seed,
        "trace": meter.trace,
        "trials": meter.trials,
        "seconds": time.perf_counter() - t0,
    }
    if meter.true_trace:
        out["true_trace"] = meter.true_trace
    if path is not None:
        store(path, out)
    return out


def best_at(trace: list[float], epochs: int) -> float:
    """The best loss after ``epochs`` charged epochs (the last one seen if the run ended
    sooner)."""
    if not trace:
        return math.inf
    return trace[min(epochs, len(trace)) - 1]


def epochs_to_reach(trace: list[float], target: float) -> float:
    hit = np.nonzero(np.asarray(trace) <= target)[0]
    return float(hit[0] + 1) if len(hit) else math.inf


def bests(runs: list[dict[str, Any]], method: str, epochs: int) -> list[float]:
    """``method``'s best loss after ``epochs`` charged epochs, one per seed it ran."""
    return [best_at(r["trace"], epochs) for r in runs if r["method"] == method]


def summarize(runs: list[dict[str, Any]], epochs: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in runs}):
        t_runs = [r for r in runs if r["task"] == task]
        rows: dict[str, Any] = {}
        for m in sorted({r["method"] for r in t_runs}):
            rs = [r for r in t_runs if r["method"] == m]
            row: dict[str, Any] = {"seeds": len(rs)}
            for k in MARKS:
                vals = np.array([best_at(r["trace"], k * epochs[task]) for r in rs])
                q25, med, q75 = np.percentile(vals, [25, 50, 75])
                row[f"@{k}"] = {"median": float(med), "q25": float(q25), "q75": float(q75)}
            if all("true_trace" in r for r in rs):  # what the picked configurations are worth
                for k in MARKS:
                    vals = [best_at(r["true_trace"], k * epochs[task]) for r in rs]
                    row[f"true@{k}"] = float(np.median(vals))
            row["trials"] = float(np.median([r["trials"] for r in rs]))
            row["seconds"] = float(np.median([r["seconds"] for r in rs]))
            rows[m] = row
        for m in [m for m in rows if is_ours(m) and "gp" in rows]:
            for key, mark, prefix in (("trace", "@30", ""), ("true_trace", "true@30", "true_")):
                if mark not in rows["gp"] or mark not in rows[m]:
                    continue
                target = rows["gp"][mark]  # true@k holds the median, @k its quartiles too
                target = target["median"] if isinstance(target, dict) else target
                need = [epochs_to_reach(r[key], target) for r in t_runs if r["method"] == m]
                rows[m][f"{prefix}epochs_to_gp_at_30"] = float(np.median(need))
                rows[m][f"{prefix}fraction_of_gp_epochs"] = float(np.median(need)) / (
                    30 * epochs[task]
                )
        others = [m for m in rows if not is_ours(m)]
        for m in [m for m in rows if is_ours(m)]:
            rows[m]["paired"] = pair_up(t_runs, m, epochs[task])
            if others:
                rows[m]["lead_chance"] = {
                    f"@{k}": lead_chance(
                        bests(t_runs, m, k * epochs[task]),
                        [bests(t_runs, o, k * epochs[task]) for o in others],
                    )
                    for k in PAIRED_MARKS
                }
        out[task] = rows
    return out


def pair_up(runs: list[dict[str, Any]], mine: str, epochs: int) -> dict[str, Any]:
    """``mine`` against every other method that is not ours, seed by seed over the seeds both
    ran, at 10 and 30 full trainings (see :func:`benchmarks.report.paired`)."""
    by_seed: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        by_seed.setdefault(r["method"], {})[r["seed"]] = r["trace"]
    out: dict[str, Any] = {}
    for peer in sorted(m for m in by_seed if not is_ours(m)):
        seeds = sorted(set(by_seed[mine]) & set(by_seed[peer]))
        if not seeds:
            continue
        out[peer] = {"seeds": len(seeds)}
        for k in PAIRED_MARKS:
            a, b = ([best_at(by_seed[m][s], k * epochs) for s in seeds] for m in (mine, peer))
            out[peer][f"@{k}"] = paired(np.array(a), np.array(b))
    return out


def print_summary(summary: dict[str, Any]) -> None:
    for task, rows in summary.items():
        print(f"\n{task}: median best validation loss [q25, q75] at k full trainings")
        print(f"  {'method':<16}" + "".join(f"{'@' + str(k):>24}" for k in MARKS) + "  trials")
        for m, row in rows.items():
            cells = ["{median:.4f} [{q25:.3f},{q75:.3f}]".format(**row[f"@{k}"]) for k in MARKS]
            print(f"  {m:<16}" + "".join(f"{c:>24}" for c in cells) + f"  {row['trials']:6.0f}")
        if any("true@30" in row for row in rows.values()):
            print("  noise-free loss of the best configuration seen (what it is really worth):")
            for m, row in rows.items():
                if "true@30" in row:
                    cells = "".join(f"{row[f'true@{k}']:>24.4f}" for k in MARKS)
                    print(f"  {m:<16}" + cells)
        for m, mf in rows.items():
            for prefix, what in (("", "median"), ("true_", "noise-free median")):
                need = mf.get(f"{prefix}epochs_to_gp_at_30")
                if need is not None and math.isfinite(need):
                    print(
                        f"  {m} reaches gp's @30 {what} in {need:.0f} epochs "
                        f"({mf[f'{prefix}fraction_of_gp_epochs']:.0%} of gp's)"
                    )
                elif need is not None:  # the median seed never got there
                    print(f"  {m} does not reach gp's @30 {what} within the budget")
            if mf.get("lead_chance"):
                chances = "  ".join(f"{k}: {p:.2f}" for k, p in mf["lead_chance"].items())
                print(f"  {m} P(lead) over every other method (bootstrap): {chances}")
            if mf.get("paired"):
                print(f"  {m} against each peer over the same seeds, wins-ties-losses:")
                for peer, c in mf["paired"].items():
                    cells = "".join(
                        "  @{k}: {w}-{t}-{l} (p {p:.2f})".format(
                            k=k,
                            w=c[f"@{k}"]["wins"],
                            t=c[f"@{k}"]["ties"],
                            l=c[f"@{k}"]["losses"],
                            p=c[f"@{k}"]["wilcoxon_p"],
                        )
                        for k in PAIRED_MARKS
                    )
                    print(f"    vs {peer:<15} over {c['seeds']} seeds" + cells)


def print_leads(summary: dict[str, Any]) -> None:
    """For each of our methods: on how many task and budget pairs it has the best median,
    and on how many it would over another draw of seeds (the bootstrap's expectation and
    5-95% range)."""
    ours = sorted({m for rows in summary.values() for m in rows if "lead_chance" in rows[m]})
    for m in ours:
        leads, chances = 0, []
        for rows in summary.values():
            if "lead_chance" not in rows.get(m, {}):
                continue
            for k in PAIRED_MARKS:
                best_other = min(r[f"@{k}"]["median"] for o, r in rows.items() if not is_ours(o))
                leads += rows[m][f"@{k}"]["median"] < best_other
                chances.append(rows[m]["lead_chance"][f"@{k}"])
        low, high = count_interval(chances)
        print(
            f"\n{m}: best median on {leads} of {len(chances)} task and budget pairs; on "
            f"another draw of seeds {sum(chances):.1f} expected, {low} to {high} in 90% of draws"
        )


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarize runs of any tasks, print the summary and the leads, and return it."""
    all_tasks = tasks()
    summary = summarize(runs, {t: all_tasks[t].epochs for t in {r["task"] for r in runs}})
    print_summary(summary)
    print_leads(summary)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(tasks()))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed .. first-seed + seeds - 1 (e.g. 5 for held-out seeds 5-9)",
    )
    ap.add_argument("--budget", type=int, default=30, help="full trainings per run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "curves.json")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    ap.add_argument(
        "--peers-from",
        type=Path,
        nargs="+",
        default=[],
        metavar="JSON",
        help="take the peer and baseline runs of these results files instead of running them",
    )
    ap.add_argument(
        "--rescore",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="run nothing: summarize these results files' runs together (ours included)",
    )
    args = ap.parse_args()
    if args.rescore:
        report(read_runs(args.rescore, "run_curves"))
        return
    for results in args.peers_from:
        try:
            print(f"{cache_from(results, args.budget)} runs taken from {results}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"--peers-from: {e}") from e
    methods = [m for m in args.methods if available(m)] + [variant(v) for v in args.variant]
    for m in sorted(set(args.methods) - set(methods)):
        print(f"skipped {m}: its package is not installed (see the README's Benchmarks)")
    jobs = [
        (t, m, s, args.budget, not args.no_cache, args.variant)
        for s in range(args.first_seed, args.first_seed + args.seeds)
        for t in args.tasks
        for m in methods
    ]
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for r in run_jobs(one_run, jobs, args.workers):
        runs.append(r)
        print(
            f"  {r['task']:<11} {r['method']:<15} seed {r['seed']}: "
            f"{best_at(r['trace'], 10 * 10**9):.4f} in {r['seconds']:.0f} s",
            flush=True,
        )
    summary = report(runs)
    payload = {"budget": args.budget, "marks": MARKS, "summary": summary, "runs": runs}
    write_results(args.out, payload, t0)


if __name__ == "__main__":
    main()

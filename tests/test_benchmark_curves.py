"""``--peers-from`` (run_curves, run_regret): a fresh checkout compares ours against the
committed peer runs without running the peers again, and never lets an older file replace a
run it has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run_curves


def _results(path: Path, budget: int, trace: list[float]) -> Path:
    runs = [
        {"task": "synthetic", "method": m, "seed": 0, "trace": trace, "trials": 4, "seconds": 1.0}
        for m in ("random_asha", "ours_mf", "no_such_method")
    ]
    path.write_text(json.dumps({"budget": budget, "runs": runs}))
    return path


def test_peer_runs_are_filed_in_the_cache_and_ours_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(run_curves, "RUN_CACHE", tmp_path / "cache")
    first = _results(tmp_path / "a.json", 2, [0.9, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"a.json: its runs have a budget of 2 .* this run 3"):
        run_curves.cache_from(first, budget=3)
    assert run_curves.cache_from(first, budget=2) == 1  # random_asha only
    filed = run_curves.cache_path("synthetic", "random_asha", 0, 2)
    assert filed is not None and filed.is_relative_to(tmp_path)
    assert json.loads(filed.read_text())["trace"] == [0.9, 0.5, 0.5]
    assert run_curves.cache_path("synthetic", "ours_mf", 0, 2) is None  # ours always runs
    # a later file does not replace what the cache holds
    second = _results(tmp_path / "b.json", 2, [0.1, 0.1, 0.1])
    assert run_curves.cache_from(second, budget=2) == 0
    assert json.loads(filed.read_text())["trace"] == [0.9, 0.5, 0.5]


def test_a_file_that_is_not_a_results_file_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        run_curves.cache_from(tmp_path / "nope.json", budget=30)
    (tmp_path / "regret.json").write_text('{"summary": {}}')
    with pytest.raises(ValueError, match="regret.json: not a run_curves results file"):
        run_curves.cache_from(tmp_path / "regret.json", budget=30)


def test_ours_is_paired_with_each_peer_seed_by_seed_at_10_and_30():
    """Medians of few seeds hide which method wins more often: the summary compares the
    same seeds. Here ours wins seeds 0 and 1 by 0.1 and loses seed 2 by 0.3, so its median
    (0.4) is worse than the peer's (0.3) while it wins 2 of 3; ``gp`` ran seed 0 only."""
    epochs = 1

    def run(method: str, seed: int, final: float) -> dict:
        trace = [1.0] * 29 + [final]  # the same best at 10 (1.0) for every run: all tied
        return {
            "task": "t",
            "method": method,
            "seed": seed,
            "trace": trace,
            "trials": 1,
            "seconds": 0,
        }

    runs = [run("ours_mf", s, v) for s, v in enumerate([0.2, 0.4, 0.6])]
    runs += [run("random_asha", s, v) for s, v in enumerate([0.3, 0.5, 0.3])]
    runs += [run("gp", 0, 0.9)]
    rows = run_curves.summarize(runs, {"t": epochs})["t"]
    assert rows["ours_mf"]["@30"]["median"] == pytest.approx(0.4)
    assert rows["random_asha"]["@30"]["median"] == pytest.approx(0.3)
    vs = rows["ours_mf"]["paired"]["random_asha"]
    assert vs["seeds"] == 3
    assert (vs["@30"]["wins"], vs["@30"]["ties"], vs["@30"]["losses"]) == (2, 0, 1)
    assert vs["@30"]["median_diff"] == pytest.approx(-0.1)
    assert (vs["@10"]["wins"], vs["@10"]["ties"], vs["@10"]["losses"]) == (0, 3, 0)
    assert vs["@10"]["wilcoxon_p"] == 1.0
    assert rows["ours_mf"]["paired"]["gp"]["seeds"] == 1
    assert "paired" not in rows["random_asha"]  # peers are not paired with each other
    # without `gp` in the run there is no @30 target to reach, but the pairing stays
    alone = run_curves.summarize(runs[:-1], {"t": epochs})["t"]["ours_mf"]
    assert "epochs_to_gp_at_30" not in alone
    assert alone["paired"]["random_asha"]["@30"]["wins"] == 2


def test_regret_peer_runs_are_filed_and_ours_and_other_budgets_are_not(tmp_path, monkeypatch):
    """``run_regret --peers-from``: the same helper serves the regret benchmark's cache."""
    from benchmarks import run_regret

    monkeypatch.setattr(run_regret, "CACHE", tmp_path / "cache")
    budget = run_regret.PROBLEMS["branin"].budget
    runs = [
        {"problem": "branin", "optimizer": o, "seed": 1, "curve": [0.5] * n, "seconds": 1.0}
        for o, n in (("random", budget), ("ours_gp", budget), ("sobol", budget - 1))
    ]
    (tmp_path / "r.json").write_text(json.dumps({"runs": runs}))
    assert run_regret.cache_from(tmp_path / "r.json") == 1  # random; sobol's budget differs
    filed = run_regret.cache_path("branin", "random", 1)
    assert filed is not None and json.loads(filed.read_text())["curve"] == [0.5] * budget
    assert run_regret.cache_from(tmp_path / "r.json") == 0  # what the cache holds stays
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a run_regret results file"):
        run_regret.cache_from(tmp_path / "bad.json")


def test_how_sure_a_lead_is_comes_with_the_summary(capsys):
    """Beside the medians, the bootstrap chance that ours leads every other method (see
    ``benchmarks.report.lead_chance``) and the count of pairs it would lead on."""
    runs = [
        {
            "task": "t",
            "method": m,
            "seed": s,
            "trace": [1.0] * 9 + [v] * 21,
            "trials": 1,
            "seconds": 0,
        }
        for m, finals in (("ours_mf", [0.1, 0.1, 0.9]), ("random_asha", [0.5, 0.5, 0.5]))
        for s, v in enumerate(finals)
    ]
    summary = run_curves.summarize(runs, {"t": 1})
    chance = summary["t"]["ours_mf"]["lead_chance"]
    # @10: ours is at 0.1 on two of three seeds, so its redrawn median is 0.1 (a lead)
    # unless two or three of the three draws are the 0.9 seed: 1 - P(Binomial(3, 1/3) >= 2)
    assert chance["@10"] == pytest.approx(1 - 7 / 27, abs=0.03)
    assert chance["@30"] == chance["@10"]  # the same finals at 30
    assert "lead_chance" not in summary["t"]["random_asha"]  # peers get no chance of their own
    run_curves.print_leads(summary)
    out = capsys.readouterr().out
    assert "ours_mf: best median on 2 of 2 task and budget pairs" in out
    assert f"on another draw of seeds {2 * chance['@10']:.1f} expected" in out


def test_held_out_seeds_run_beside_peer_runs_taken_from_several_files(tmp_path, monkeypatch):
    """``--first-seed 5``: a run on seeds no earlier file has (held out from every choice
    made on seeds 0-4); ``--peers-from A B``: peer runs of seeds kept in separate files come
    together in one summary. Here seed 5's peer run comes from one file, seed 6's from
    another, and random search + ASHA really runs on seed 7."""
    monkeypatch.setattr(run_curves, "RUN_CACHE", tmp_path / "cache")
    files = []
    for seed, final in ((5, 0.11), (6, 0.22)):
        run = {"task": "synthetic", "method": "random_asha", "seed": seed, "trials": 1}
        run |= {"trace": [0.9] * 12 + [final] * 12, "seconds": 0.0}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps({"budget": 2, "runs": [run]}))
    out = tmp_path / "out.json"
    argv = ["run_curves", "--tasks", "synthetic", "--methods", "random_asha", "--budget", "2"]
    argv += ["--first-seed", "5", "--seeds", "3", "--workers", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--peers-from", *map(str, files)])
    run_curves.main()
    runs = {r["seed"]: r for r in json.loads(out.read_text())["runs"]}
    assert sorted(runs) == [5, 6, 7]
    assert runs[5]["trace"][-1] == 0.11 and runs[5]["cached"]
    assert runs[6]["trace"][-1] == 0.22 and runs[6]["cached"]
    assert "cached" not in runs[7] and len(runs[7]["trace"]) == 24  # 2 trainings of 12 epochs
    filed = run_curves.cache_path("synthetic", "random_asha", 7, 2)
    assert filed is not None and filed.is_relative_to(tmp_path) and filed.exists()


def test_the_noise_free_worth_of_the_best_configuration_seen_is_traced_beside_it():
    """On the synthetic family a best loss seen can be a lucky noise draw below the family's
    noise-free optimum (about 0.2349); the meter's ``true_trace`` holds what the
    configuration and epoch behind each best are really worth, which never is."""
    import numpy as np

    from benchmarks.curve_tasks import synthetic_exact, tasks

    task = tasks()["synthetic"]
    meter = run_curves.Meter(task, budget_epochs=40 * task.epochs)
    rng = np.random.default_rng(3)
    picked: list[tuple[dict, int]] = []  # (configuration, epoch) behind each best
    for _ in range(40):  # configurations near the optimum (x1 0.63, x2 0.18, x3 0.17)
        u = np.clip([0.63, 0.18, 0.17] + 0.03 * rng.standard_normal(3), 0, 1)
        p = {"x1": u[0], "x2": u[1], "x3": u[2], "x4": 0.5, "kind": "a"}
        for e in range(1, task.epochs + 1):
            v = meter.epoch(p, e)
            if not picked or v < meter.trace[-2]:
                picked.append((p, e))
            assert meter.true_trace[-1] == synthetic_exact(*picked[-1])
    assert len(meter.true_trace) == len(meter.trace) == 40 * task.epochs
    assert meter.trace[-1] < 0.2349 < meter.true_trace[-1]  # the luck, and the worth
    assert min(meter.true_trace) > 0.2348
    # a task without noise-free losses keeps no such trace
    mlp = run_curves.Meter(tasks()["digits_mlp"], budget_epochs=1)
    assert mlp.task.exact is None and mlp.true_trace == []


def test_ours_reaches_gps_noise_free_quality_in_a_share_of_its_epochs(
    tmp_path, monkeypatch, capsys
):
    """Where runs carry a ``true_trace``, the summary gives each method's median noise-free
    worth at the marks and the epochs ours needs to reach ``gp``'s at 30, beside the same on
    the losses seen; runs without one (peer runs from an older file) get neither, and
    ``--peers-from`` keeps the trace when a file has it."""
    flat = [1.0] * 30
    runs = []
    for s in range(3):
        for m, worth, at in (("gp", 0.5, 30), ("ours_mf", 0.4, 12)):
            r = {"task": "t", "method": m, "seed": s, "trials": 1, "seconds": 0}
            r["trace"] = [1.0] * 5 + [0.3] * 25  # seen: both reach 0.3 at epoch 6
            r["true_trace"] = [1.0] * (at - 1) + [worth] * (31 - at)
            runs.append(r)
    runs.append({"task": "t", "method": "random_asha", "seed": 0, "trace": flat})
    runs[-1] |= {"trials": 1, "seconds": 0}
    rows = run_curves.summarize(runs, {"t": 1})["t"]
    assert rows["gp"]["true@30"] == 0.5 and rows["ours_mf"]["true@10"] == 1.0
    assert rows["ours_mf"]["true@20"] == 0.4
    assert rows["ours_mf"]["fraction_of_gp_epochs"] == pytest.approx(6 / 30)
    assert rows["ours_mf"]["true_epochs_to_gp_at_30"] == 12
    assert rows["ours_mf"]["true_fraction_of_gp_epochs"] == pytest.approx(12 / 30)
    assert "true@30" not in rows["random_asha"]
    run_curves.print_summary({"t": rows})
    assert "ours_mf reaches gp's @30 noise-free median in 12 epochs (40% of gp's)" in (
        capsys.readouterr().out
    )
    for r in runs[1:6:2]:  # ours' configurations never get as good as gp's
        r["true_trace"] = [0.6] * 30
    run_curves.print_summary(run_curves.summarize(runs, {"t": 1}))
    out = capsys.readouterr().out
    assert "ours_mf does not reach gp's @30 noise-free median within the budget" in out
    # filed from a results file with the trace kept
    monkeypatch.setattr(run_curves, "RUN_CACHE", tmp_path / "cache")
    peer = dict(runs[0], method="random_asha", task="synthetic")
    (tmp_path / "r.json").write_text(json.dumps({"budget": 30, "runs": [peer]}))
    assert run_curves.cache_from(tmp_path / "r.json", budget=30) == 1
    filed = run_curves.cache_path("synthetic", "random_asha", 0, 30)
    assert json.loads(filed.read_text())["true_trace"] == peer["true_trace"]


def test_rescore_summarizes_the_runs_of_several_files_and_runs_nothing(
    tmp_path, monkeypatch, capsys
):
    """``--rescore A B``: ours' and the peers' committed runs of seeds kept in separate files
    summarized together (ours runs are not numerically identical on another machine, so a
    ten-seed table is read from the files rather than rerun)."""
    monkeypatch.setattr(run_curves, "RUN_CACHE", tmp_path / "cache")
    files = []
    for seed, ours, peer in ((0, 0.1, 0.3), (1, 0.2, 0.1), (2, 0.3, 0.5)):
        runs = [
            {"task": "synthetic", "method": m, "seed": seed, "trials": 1, "seconds": 0.0}
            | {"trace": [0.9] * 12 + [v] * 348}
            for m, v in (("ours_mf", ours), ("random_asha", peer))
        ]
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps({"budget": 30, "runs": runs}))
    monkeypatch.setattr("sys.argv", ["run_curves", "--rescore", *map(str, files)])
    run_curves.main()
    out = capsys.readouterr().out
    ours_row = next(line for line in out.splitlines() if line.strip().startswith("ours_mf "))
    assert ours_row.split()[1:3] == ["0.2000", "[0.150,0.250]"]  # @5: the median of 3 seeds
    assert "vs random_asha     over 3 seeds  @10: 2-0-1" in out
    assert not (tmp_path / "cache").exists()  # nothing ran, nothing was filed
    monkeypatch.setattr("sys.argv", ["run_curves", "--rescore", str(tmp_path / "no.json")])
    with pytest.raises(SystemExit, match="no.json: not a run_curves results file"):
        run_curves.main()


def test_a_variant_sets_pruner_options_and_under_sampler_the_samplers():
    name, sampler_options, pruner_options = run_curves.variant_options(
        'te8={"sampler": {"thompson_every": 8}, "threshold": 0.1}'
    )
    assert (name, sampler_options, pruner_options) == (
        "ours_te8",
        {"thompson_every": 8},
        {"threshold": 0.1},
    )
    assert run_curves.variant_options('t={"eta": 3}') == ("ours_t", None, {"eta": 3})
    with pytest.raises(SystemExit, match="ours_mf is a built-in method"):
        run_curves.variant('mf={"eta": 3}')

    from benchmarks.curve_tasks import tasks

    seen: list[tuple[int, float, int, bool]] = []

    def watch(study, trial, epoch, stop):
        seen.append((study.sampler.thompson_every, study.pruner.threshold, epoch, stop))

    run = run_curves.ours("gp", "gp", watch=watch, sampler_options=sampler_options, threshold=0.1)
    task = tasks()["synthetic"]
    run(run_curves.Meter(task, budget_epochs=3 * task.epochs), 0)  # ends at the budget
    assert {(te, th) for te, th, _, _ in seen} == {(8, 0.1)}
    # every epoch charged is reported and watched; a trial's last epoch is never stopped
    assert len(seen) == 3 * task.epochs and any(stop for *_, stop in seen)
    assert all(not stop for _, _, epoch, stop in seen if epoch == task.epochs)

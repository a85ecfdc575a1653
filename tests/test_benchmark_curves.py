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

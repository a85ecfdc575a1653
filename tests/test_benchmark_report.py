"""How sure a benchmark's "best median" is: the bootstrap chance of leading, the spread of
the number of problems led, and ``run_regret --rescore`` scoring runs already made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import count_interval, lead_chance

ROOT = Path(__file__).resolve().parents[1]


def test_a_lead_by_every_seed_is_certain_and_a_loss_never_leads():
    assert lead_chance([1.0] * 5, [[2.0] * 5, [3.0] * 3]) == 1.0
    assert lead_chance([2.0] * 5, [[1.0] * 5]) == 0.0
    assert lead_chance([1.0] * 5, [[1.0] * 5]) == 0.0  # a tie is not a lead


def test_lead_chance_is_the_chance_that_a_redrawn_median_is_lower():
    # Three of five seeds at 0, two at 10, against a peer always at 5: the redrawn median is
    # below 5 when at least 3 of the 5 redrawn seeds are 0s, P(Binomial(5, 0.6) >= 3).
    exact = sum([10 * 0.6**3 * 0.4**2, 5 * 0.6**4 * 0.4, 0.6**5])  # 0.68256
    assert lead_chance([0, 0, 0, 10, 10], [[5.0] * 5]) == pytest.approx(exact, abs=0.03)


def test_the_count_interval_is_the_poisson_binomial_quantiles():
    assert count_interval([1.0, 1.0, 0.0]) == (2, 2)
    assert count_interval([0.5, 0.5]) == (0, 2)  # 1/4, 1/2, 1/4
    assert count_interval([0.9] * 10) == (7, 10)  # P(<= 6) = 0.013, P(<= 7) = 0.070


def test_rescore_scores_a_variant_against_the_peers_of_another_file(tmp_path):
    budget = 40  # branin's

    def runs(opt: str, finals: list[float]) -> list[dict]:
        return [
            {"problem": "branin", "optimizer": opt, "seed": s, "curve": [v] * budget, "seconds": 1}
            for s, v in enumerate(finals)
        ]

    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"runs": runs("optuna_tpe", [1.0] * 5) + runs("random", [9.0])}))
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"runs": runs("variant:x", [0.5, 0.5, 0.5, 2.0, 2.0])}))
    cmd = [sys.executable, "-m", "benchmarks.run_regret", "--rescore", str(peers), str(mine)]
    out = subprocess.run(
        [*cmd, "--me", "variant:x"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "best median on 1 of 1" in out
    row = [line for line in out.splitlines() if line.strip().startswith("branin ")][-1]
    assert row.split()[2:6] == ["0.5", "optuna_tpe", "1", "0.50"]  # ours, peer, median, ratio
    chance = float(row.split()[6])
    assert chance == pytest.approx(0.68256, abs=0.03)
    assert not list(tmp_path.glob("*results*")) and len(list(tmp_path.iterdir())) == 2
    bad = subprocess.run(
        [*cmd, "--me", "ours_gp"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0 and "no runs of 'ours_gp'" in bad.stderr


def test_run_regret_runs_every_variant_given_whether_in_one_flag_or_several(tmp_path):
    """``--variant`` once per variant (as ``run_curves`` takes it) used to keep the last one."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "benchmarks.run_regret", "--problems", "branin", "--seeds", "1"]
    cmd += ["--workers", "1", "--out", str(out), "--optimizers"]
    # n_init past the budget: Sobol points only, so the test spends its time on the flags
    sobol = '"n_init": 99'
    cmd += ["--variant", f'a={{"xi": 0.0, {sobol}}}', "--variant", f'b={{"xi": 0.5, {sobol}}}']
    cmd += [f'c={{"beta": 3.0, {sobol}}}']
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["optimizer"] for r in runs) == ["variant:a", "variant:b", "variant:c"]

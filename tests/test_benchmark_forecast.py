"""``run_forecast``: the learning-curve model's forecasts of stopped curves, scored against
the curves' true ends, beat going by the best value reported so far."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_forecasts_rank_stopped_trials_better_than_their_last_report(tmp_path):
    out = tmp_path / "forecast.json"
    cmd = [sys.executable, "-m", "benchmarks.run_forecast", "--tasks", "synthetic"]
    cmd += ["--kernels", "last", "matern", "freeze_thaw", "--reps", "2", "--pool", "40"]
    cmd += ["--complete", "8", "--partial", "20", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "synthetic: 2 draws of 8 complete and 20 stopped" in done.stdout
    rows = json.loads(out.read_text())["summary"]["synthetic"]
    assert set(rows) == {"last", "matern", "freeze_thaw"}
    for kernel in ("matern", "freeze_thaw"):
        # the synthetic family's best configurations start slowest: the last report ranks
        # them badly, a model of how such curves end ranks them well
        assert rows[kernel]["spearman"] > rows["last"]["spearman"] + 0.1
        assert rows[kernel]["rmse_over_sd"] < rows["last"]["rmse_over_sd"]
        assert 0.0 <= rows[kernel]["within_1sd"] <= 1.0 and rows[kernel]["fit_seconds"] > 0


def test_unknown_kernels_and_a_pool_too_small_are_refused(tmp_path):
    base = [sys.executable, "-m", "benchmarks.run_forecast", "--out", str(tmp_path / "f.json")]
    bad = subprocess.run([*base, "--kernels", "rbf"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--kernels: unknown ['rbf']" in bad.stderr
    small = subprocess.run([*base, "--pool", "10"], cwd=ROOT, capture_output=True, text=True)
    assert small.returncode != 0 and "must not exceed --pool" in small.stderr
    assert not (tmp_path / "f.json").exists()

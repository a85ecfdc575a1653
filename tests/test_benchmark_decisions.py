"""``run_decisions``: each decision of ``pruner: gp`` in a study, with its forecast scored
against the trial's true final running best."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_each_decision_is_scored_against_the_trials_true_end(tmp_path):
    out = tmp_path / "decisions.json"
    cmd = [sys.executable, "-m", "benchmarks.run_decisions", "--tasks", "synthetic"]
    cmd += ["--seeds", "2", "--budget", "8", "--workers", "1", "--out", str(out)]
    cmd += ["--variant", '{"threshold": 0.05, "sampler": {"thompson_every": 4}}']  # the defaults
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    rows, summary = data["decisions"], data["summary"]
    assert {r["seed"] for r in rows} == {0, 1} and {r["task"] for r in rows} == {"synthetic"}
    # the synthetic family costs nothing to train on: every decision has its truth
    assert rows and all(r["truth"] is not None for r in rows)
    # the rungs: 2, 4, 8 for the model; 1 where, before n_startup trials completed, it may
    # keep a leader that ASHA's rank would stop
    assert {2, 4} <= {r["reports"] for r in rows} <= {1, 2, 4, 8}
    assert sum(s["n"] for s in summary.values()) == len(rows)
    for key, s in summary.items():
        task, reports, decision = key.split("/")
        group = [
            r for r in rows if r["reports"] == int(reports) and r["stop"] == (decision == "stop")
        ]
        assert s["n"] == len(group)
        beat = sum(r["truth"] < r["incumbent"] for r in group) / len(group)
        assert abs(s["improved"] - beat) < 1e-12 and 0.0 <= s["p_improve"] <= 1.0
        assert s["z_rms"] >= abs(s["z_mean"])
    stops = [r["p_improve"] for r in rows if r["stop"]]
    goes = [r["p_improve"] for r in rows if not r["stop"]]
    assert stops and goes and sum(stops) / len(stops) < sum(goes) / len(goes)
    assert "task/reports/decision" in done.stdout and "synthetic/2/" in done.stdout


def test_an_unknown_task_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "d.json"
    cmd = [sys.executable, "-m", "benchmarks.run_decisions", "--tasks", "cifar", "--out", str(out)]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--tasks: unknown ['cifar']" in bad.stderr
    assert not out.exists()

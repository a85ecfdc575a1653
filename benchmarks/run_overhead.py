"""The subprocess executor's own cost per trial: the launcher's wall time per trial minus the
same script's wall time when run alone, measured in the same run.

    python -m benchmarks.run_overhead                  # 8 trials per script
    python -m benchmarks.run_overhead --trials 4

Two scripts: ``recipes/digits_cnn.py`` for 3 epochs (a real Lightning training script that
reports through stdout lines) and a trivial one (``python -c`` printing a JSON line), which
shows the fixed cost alone. Every trial gets the same fixed parameters, so the work per trial
is identical. One worker, pruning off, TensorBoard on (as users run it). Prints a table and
writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from torchtune_hp.executors.argv import build_argv
from torchtune_hp.executors.devices import thread_env
from torchtune_hp.recipe import load_recipe
from torchtune_hp.runner import run_recipe

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"

SCRIPTS = {
    "digits_cnn.py, 3 epochs": {
        "command": [sys.executable, str(ROOT / "recipes" / "digits_cnn.py"), "--epochs", "3"],
        "space": {
            "lr": {"type": "fixed", "value": 0.003},
            "channels": {"type": "fixed", "value": 8},
            "dropout": {"type": "fixed", "value": 0.1},
        },
        "metric_regex": r"valid loss (?P<value>[0-9.eE+-]+)",
    },
    "trivial (python -c)": {
        # braces are doubled: a command element with {name} in it is a template
        "command": [sys.executable, "-c", "import json; print(json.dumps({{'val_loss': 1.0}}))"],
        "space": {"x": {"type": "fixed", "value": 1}},
        "metric_regex": None,
    },
}


def alone(argv: list[str], n: int) -> list[float]:
    """Wall times of ``n`` runs after one untimed warm-up run (file caches), with the thread
    setting the launcher gives one worker."""
    env = {**os.environ, **thread_env(1)}
    times = []
    with tempfile.TemporaryDirectory() as cwd:  # where the launcher would run it, too
        for i in range(n + 1):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
            if i:
                times.append(time.perf_counter() - t0)
    return times


def launched(spec: dict, n: int, workdir: Path) -> float:
    objective = {"command": spec["command"], "args": "argparse"}
    if spec["metric_regex"]:
        objective["metric_regex"] = spec["metric_regex"]
    recipe = {
        "study": {"name": "overhead", "metric": "val_loss", "trials": n, "seed": 0},
        "space": spec["space"],
        "sampler": {"name": "random"},
        "objective": objective,
        "executor": {"workers": 1, "devices": "cpu"},
        "logdir": str(workdir / "logs"),
    }
    path = workdir / "overhead.yaml"
    path.write_text(yaml.safe_dump(recipe))
    t0 = time.perf_counter()
    study = run_recipe(load_recipe(path))
    wall = time.perf_counter() - t0
    assert all(t.value is not None for t in study.trials), [t.error for t in study.trials]
    study.close()
    return wall / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for name, spec in SCRIPTS.items():
        fixed = {k: v["value"] for k, v in spec["space"].items()}
        argv = build_argv(spec["command"], fixed)  # exactly what the launcher runs
        # alone, launched, alone again: machine drift shows as a gap between the two
        before = alone(argv, args.trials // 2)
        with tempfile.TemporaryDirectory() as tmp:
            per_trial = launched(spec, args.trials, Path(tmp))
        script_times = before + alone(argv, args.trials - args.trials // 2)
        median_alone = statistics.median(script_times)
        rows.append(
            {
                "script": name,
                "alone_median_s": median_alone,
                "launched_per_trial_s": per_trial,
                "overhead_s": per_trial - median_alone,
                "trials": args.trials,
            }
        )
    print(f"{'script':<26} {'alone (median)':>15} {'launched/trial':>15} {'overhead':>10}")
    for r in rows:
        print(
            f"{r['script']:<26} {r['alone_median_s']:>14.3f}s {r['launched_per_trial_s']:>14.3f}s "
            f"{r['overhead_s']:>+9.3f}s"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": platform.platform(), "python": sys.version.split()[0], "rows": rows}
    (RESULTS / "overhead.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""The Ray executor's cost per trial against the local pool and Ray Tune, on one machine.

    python -m benchmarks.run_ray                 # 16 and 48 trials, 4 workers
    python -m benchmarks.run_ray --small 8 --large 24

One Ray cluster is started for the whole run (``ray start --head``, 4 CPUs, token auth on),
and every method uses it (the local pool does not need it). The objective is instant (a
function returning a number), so what is measured is the tuner's own cost: the marginal wall
time per trial, ``(wall(large) - wall(small)) / (large - small)`` with 4 trials at once (fixed
costs such as connecting cancel out), its overhead per trial (marginal time x 4 workers), and
trials per minute. Ray Tune runs the same function with its defaults (``Tuner``,
``max_concurrent_trials=4``, 1 CPU per trial). Then a GP study (20 trials, seed 0, 4 workers)
runs on the local pool (twice) and on Ray for each of 5 seeds: the best values they reach (trials
end in an order that varies from run to run, so the sampler's history does too; the local pool
run twice shows how much that alone changes). Prints a table and writes
``benchmarks/results/ray.json``. Needs ``pip install -e ".[ray]" "ray[tune]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from torchtune_hp.recipe import load_recipe
from torchtune_hp.runner import run_recipe

RESULTS = Path(__file__).parent / "results"
WORKERS = 4
OBJECTIVE = """\
def instant(trial):
    x, y = trial.params["x"], trial.params["y"]
    return (x - 0.3) ** 2 + (y - 0.7) ** 2 + 0.1 * x * y
"""


def start_cluster(folder: Path) -> tuple[subprocess.Popen, str]:
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0"
    )
    port = 6390 + os.getpid() % 500
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=4"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert head.stdout is not None
    for line in head.stdout:
        if "Ray runtime started" in line:
            break
    return head, f"127.0.0.1:{port}"


def ours(
    folder: Path, executor: dict, trials: int, sampler: str = "random", seed: int = 0
) -> tuple[float, float]:
    """Wall time of a study of ``trials`` and its best value."""
    home = Path(tempfile.mkdtemp(dir=folder))
    (home / "obj.py").write_text(OBJECTIVE)
    recipe = {
        "study": {"name": "b", "metric": "val_loss", "trials": trials, "seed": seed},
        "space": {
            "x": {"type": "float", "low": 0.0, "high": 1.0},
            "y": {"type": "float", "low": 0.0, "high": 1.0},
        },
        "sampler": {"name": sampler},
        "objective": {"function": "obj.py:instant"},
        "tensorboard": {"enabled": True, "images_every": 0},
        "executor": {"workers": WORKERS, **executor},
        "logdir": str(home / "logs"),
    }
    (home / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    began = time.perf_counter()
    study = run_recipe(load_recipe(home / "recipe.yaml"))
    wall = time.perf_counter() - began
    best = study.best_trial.value
    study.close()
    return wall, float(best)


def ray_tune(address: str, trials: int, folder: Path) -> float:
    import ray
    from ray import tune

    def instant(config):
        x, y = config["x"], config["y"]
        tune.report({"val_loss": (x - 0.3) ** 2 + (y - 0.7) ** 2 + 0.1 * x * y})

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        began = time.perf_counter()
        tune.Tuner(
            instant,
            param_space={"x": tune.uniform(0, 1), "y": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(
                num_samples=trials, max_concurrent_trials=WORKERS, metric="val_loss", mode="min"
            ),
            run_config=tune.RunConfig(storage_path=str(folder / "tune"), verbose=0),
        ).fit()
        return time.perf_counter() - began
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=16)
    parser.add_argument("--large", type=int, default=48)
    parser.add_argument("--gp-seeds", type=int, default=5)
    parser.add_argument("--gp-only", action="store_true", help="skip the timing part")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    head, address = start_cluster(folder)
    try:
        methods = {
            "local pool": lambda n: ours(folder, {"devices": "cpu"}, n)[0],
            "torchtune_hp on Ray": lambda n: ours(folder, {"name": "ray", "address": address}, n)[
                0
            ],
            "Ray Tune (defaults)": lambda n: ray_tune(address, n, folder),
        }
        rows = {}
        for name, run in methods.items():
            if args.gp_only:
                break
            small, large = run(args.small), run(args.large)
            marginal = (large - small) / (args.large - args.small)
            rows[name] = {
                f"wall_{args.small}": small,
                f"wall_{args.large}": large,
                "marginal_s_per_trial": marginal,
                "overhead_s_per_trial": marginal * WORKERS,
                "trials_per_minute": 60 / marginal,
            }
        gp: dict[str, list[float]] = {"local pool": [], "local pool again": [], "Ray": []}
        for seed in range(args.gp_seeds):
            for name, executor in (
                ("local pool", {"devices": "cpu"}),
                ("local pool again", {"devices": "cpu"}),
                ("Ray", {"name": "ray", "address": address}),
            ):
                gp[name].append(ours(folder, executor, 20, "gp", seed)[1])
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-s", str(head.pid)], check=False)
    print(f"instant objective, {WORKERS} workers, {platform.node()} ({os.cpu_count()} cores)")
    print(f"{'method':<22} {'s/trial':>9} {'overhead/trial':>15} {'trials/min':>11}")
    for name, r in rows.items():
        print(
            f"{name:<22} {r['marginal_s_per_trial']:>9.3f} {r['overhead_s_per_trial']:>15.3f} "
            f"{r['trials_per_minute']:>11.1f}"
        )
    print(f"GP, 20 trials, {WORKERS} workers, best value per seed (0..{args.gp_seeds - 1}):")
    for name, values in gp.items():
        median = statistics.median(values)
        print(f"  {name:<18} median {median:.5f}  " + " ".join(f"{v:.5f}" for v in values))
    RESULTS.mkdir(exist_ok=True)
    out = {"workers": WORKERS, "cores": os.cpu_count(), "methods": rows, "gp_best": gp}
    name = "ray_gp.json" if args.gp_only else "ray.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())

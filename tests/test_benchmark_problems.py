"""The regret benchmark's problems: each stated optimum is reached at its known minimizer and
never beaten, so a reported regret is a true distance to the optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.problems import PROBLEMS

MINIMIZERS = {
    "branin": {"x1": math.pi, "x2": 2.275},
    "rosenbrock4": {f"x{i}": 1.0 for i in range(4)},
    "hartmann3": {"x0": 0.114614, "x1": 0.555649, "x2": 0.852547},
    "hartmann6": dict(
        zip(
            [f"x{i}" for i in range(6)],
            [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573],
            strict=True,
        )
    ),
    "styblinski_tang4": {f"x{i}": -2.903534 for i in range(4)},
    "levy4": {f"x{i}": 1.0 for i in range(4)},
    "ackley5": {f"x{i}": 0.0 for i in range(5)},
    "michalewicz5": dict(
        zip(
            [f"x{i}" for i in range(5)],
            [2.202906, 1.570796, 1.284992, 1.923058, 1.720470],
            strict=True,
        )
    ),
    "griewank5": {f"x{i}": 0.0 for i in range(5)},
    "mixed_hpo": {"lr": 10**-2.5, "dropout": 0.2, "width": 256, "optimizer": "adam"},
    "noisy_rosenbrock4": {f"x{i}": 1.0 for i in range(4)},
    # Branin's minimizer on x4 (x1 in -5..10) and x1 (x2 in 0..15); the rest is ignored.
    "lowdim_branin6": {
        "x0": 0.9,
        "x1": 2.275 / 15,
        "x2": 0.1,
        "x3": 0.5,
        "x4": (math.pi + 5) / 15,
        "x5": 0.0,
    },
    "lowdim_hartmann3_10": {f"x{i}": 0.5 for i in range(10)}
    | {"x7": 0.114614, "x2": 0.555649, "x5": 0.852547},
}


def test_every_problem_has_a_checked_minimizer():
    assert set(MINIMIZERS) == set(PROBLEMS)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_the_optimum_is_reached_and_never_beaten(name):
    problem = PROBLEMS[name]
    assert abs(problem.regret(MINIMIZERS[name])) < 1e-4
    rng = np.random.default_rng(0)
    regrets = [
        problem.regret(problem.space.decode(u)) for u in rng.random((3000, problem.space.dim))
    ]
    assert min(regrets) > -1e-6


def test_the_default_regret_run_is_ours_against_the_peers_the_readme_names():
    """The README's `python -m benchmarks.run_regret  # 13 problems x 8 optimizers`: the
    ours_gp_* options and former defaults ran too (14 optimizers) until they were left to be
    run by name."""
    from pathlib import Path

    from benchmarks.run_regret import DEFAULT

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"{len(PROBLEMS)} problems x {len(DEFAULT)} optimizers" in readme
    assert [o for o in DEFAULT if o.startswith("ours")] == ["ours_gp"]
    assert {"optuna_tpe", "optuna_gp", "botorch_logei", "skopt_gp", "hebo"} < set(DEFAULT)

"""Benchmark problems: standard synthetic functions and a noisy mixed HPO-like space.

Each problem has a search space (our ``Space``, translated per peer), an objective over a plain
parameter dict, and its known optimum value, so simple regret = best found - optimum. Each also
names its kind, the property a tuner has to cope with there: ``smooth``, ``basins`` (a few
wide local optima), ``rugged`` (many local optima), ``noisy`` (a seeded-run-like noise that is
a fixed function of the point; regret is scored on the noise-free truth) and ``low-dim`` (most
parameters do nothing).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchtune_hp.space import Categorical, Float, Int, Space


@dataclass(frozen=True)
class Problem:
    """``f`` is what optimizers see; ``truth`` (noise-free, defaults to ``f``) scores regret."""

    name: str
    space: Space
    f: Callable[[dict[str, Any]], float]
    optimum: float
    budget: int
    truth: Callable[[dict[str, Any]], float] | None = None
    kind: str = "smooth"

    def regret(self, params: dict[str, Any]) -> float:
        return (self.truth or self.f)(params) - self.optimum


def _box(names: list[str], low: float, high: float) -> Space:
    return Space({n: Float(low, high) for n in names})


def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p: dict[str, Any]) -> float:
    return _hartmann(np.array([p[f"x{i}"] for i in range(6)]), _H6_A, _H6_P)


def levy(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    w = 1 + (x - 1) / 4
    term = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(np.pi * w[:-1] + 1) ** 2))
    return float(
        np.sin(np.pi * w[0]) ** 2 + term + (w[-1] - 1) ** 2 * (1 + np.sin(2 * np.pi * w[-1]) ** 2)
    )


def ackley(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    d = len(x)
    return float(
        -20 * np.exp(-0.2 * np.sqrt(np.sum(x**2) / d))
        - np.exp(np.sum(np.cos(2 * np.pi * x)) / d)
        + 20
        + math.e
    )


def rosenbrock(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array(
    [[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]]
)


def _hartmann(x: np.ndarray, a: np.ndarray, p: np.ndarray) -> float:
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(a * (x - p) ** 2, axis=1))))


def hartmann3(p: dict[str, Any]) -> float:
    return _hartmann(np.array([p[f"x{i}"] for i in range(3)]), _H3_A, _H3_P)


def michalewicz(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    i = np.arange(1, len(x) + 1)
    return float(-np.sum(np.sin(x) * np.sin(i * x**2 / np.pi) ** 20))


def styblinski_tang(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


def griewank(p: dict[str, Any]) -> float:
    x = np.array([p[k] for k in sorted(p)])
    i = np.arange(1, len(x) + 1)
    return float(np.sum(x**2) / 4000 - np.prod(np.cos(x / np.sqrt(i))) + 1)


def _seeded_normal(key: str) -> float:
    """A standard normal draw that is a fixed function of ``key`` (a point's repr): noise like
    a seeded training run's, the same every time the point is evaluated."""
    return float(np.random.default_rng(zlib.crc32(key.encode())).standard_normal())


def _point_noise(p: dict[str, Any], sd: float) -> float:
    return sd * _seeded_normal(repr(sorted((k, round(float(v), 12)) for k, v in p.items())))


def noisy_rosenbrock(p: dict[str, Any]) -> float:
    return rosenbrock(p) + _point_noise(p, 20.0)


def embedded(
    f: Callable[[dict[str, Any]], float], active: dict[str, tuple[str, float, float]]
) -> Callable[[dict[str, Any]], float]:
    """``f`` over a few of the unit-cube parameters (``active``: our name -> f's name and its
    range); every other parameter of the space is ignored."""

    def g(p: dict[str, Any]) -> float:
        return f({fn: lo + (hi - lo) * p[ours] for ours, (fn, lo, hi) in active.items()})

    return g


_OPT_BONUS = {"sgd": 0.15, "adam": 0.0, "adamw": 0.02, "rmsprop": 0.3}


def mixed_hpo_true(p: dict[str, Any]) -> float:
    """A validation-loss-like surface: best (0.25) at lr=10^-2.5 (log), dropout 0.2, width 256,
    adam; diverges at large lr."""
    lr, dropout, width, opt = p["lr"], p["dropout"], p["width"], p["optimizer"]
    loss = 0.25 + 0.08 * (math.log10(lr) + 2.5) ** 2 + 0.5 * (dropout - 0.2) ** 2
    loss += 0.04 * (math.log2(width) - 8) ** 2 / 4 + _OPT_BONUS[opt]
    if lr > 0.05:
        loss += 10 * (lr - 0.05)  # divergence
    return loss


def mixed_hpo(p: dict[str, Any]) -> float:
    """``mixed_hpo_true`` plus noise (sd 0.01) that is a fixed function of the point, like a
    seeded training run."""
    key = repr((round(p["lr"], 12), round(p["dropout"], 12), p["width"], p["optimizer"]))
    return mixed_hpo_true(p) + 0.01 * _seeded_normal(key)


def _problems() -> dict[str, Problem]:
    unit = _box([f"x{i}" for i in range(6)], 0, 1)
    unit10 = _box([f"x{i}" for i in range(10)], 0, 1)
    mixed_space = Space(
        {
            "lr": Float(1e-5, 1.0, log=True),
            "dropout": Float(0.0, 0.8),
            "width": Int(16, 1024, log=True),
            "optimizer": Categorical(["sgd", "adam", "adamw", "rmsprop"]),
        }
    )
    x = [f"x{i}" for i in range(10)]
    problems = [
        Problem("branin", Space({"x1": Float(-5, 10), "x2": Float(0, 15)}), branin, 0.397887, 40),
        Problem("rosenbrock4", _box(x[:4], -5, 10), rosenbrock, 0.0, 40),
        Problem("hartmann3", _box(x[:3], 0, 1), hartmann3, -3.86278, 40, kind="basins"),
        Problem("hartmann6", unit, hartmann6, -3.32237, 60, kind="basins"),
        Problem(
            "styblinski_tang4", _box(x[:4], -5, 5), styblinski_tang, -156.66466, 40, kind="basins"
        ),
        Problem("levy4", _box(x[:4], -10, 10), levy, 0.0, 40, kind="rugged"),
        Problem("ackley5", _box(x[:5], -32.768, 32.768), ackley, 0.0, 40, kind="rugged"),
        Problem("michalewicz5", _box(x[:5], 0, math.pi), michalewicz, -4.687658, 50, kind="rugged"),
        Problem("griewank5", _box(x[:5], -600, 600), griewank, 0.0, 40, kind="rugged"),
        Problem("mixed_hpo", mixed_space, mixed_hpo, 0.25, 40, truth=mixed_hpo_true, kind="noisy"),
        Problem(
            "noisy_rosenbrock4",
            _box(x[:4], -5, 10),
            noisy_rosenbrock,
            0.0,
            40,
            truth=rosenbrock,
            kind="noisy",
        ),
        # Branin on 2 of 6 parameters (not the first two), Hartmann3 on 3 of 10.
        Problem(
            "lowdim_branin6",
            unit,
            embedded(branin, {"x4": ("x1", -5, 10), "x1": ("x2", 0, 15)}),
            0.397887,
            40,
            kind="low-dim",
        ),
        Problem(
            "lowdim_hartmann3_10",
            unit10,
            embedded(hartmann3, {"x7": ("x0", 0, 1), "x2": ("x1", 0, 1), "x5": ("x2", 0, 1)}),
            -3.86278,
            50,
            kind="low-dim",
        ),
    ]
    return {p.name: p for p in problems}


PROBLEMS = _problems()

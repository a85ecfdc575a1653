"""Benchmark problems: standard synthetic functions and a noisy mixed HPO-like space.

Each problem has a search space (our ``Space``, translated per peer), an objective over a plain
parameter dict, and its known optimum value, so simple regret = best found - optimum.
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
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


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
    key = zlib.crc32(
        repr((round(p["lr"], 12), round(p["dropout"], 12), p["width"], p["optimizer"])).encode()
    )
    return mixed_hpo_true(p) + 0.01 * float(np.random.default_rng(key).standard_normal())


PROBLEMS = {
    "branin": Problem(
        "branin", Space({"x1": Float(-5, 10), "x2": Float(0, 15)}), branin, 0.397887, 40
    ),
    "hartmann6": Problem(
        "hartmann6", _box([f"x{i}" for i in range(6)], 0, 1), hartmann6, -3.32237, 60
    ),
    "levy4": Problem("levy4", _box([f"x{i}" for i in range(4)], -10, 10), levy, 0.0, 40),
    "ackley5": Problem(
        "ackley5", _box([f"x{i}" for i in range(5)], -32.768, 32.768), ackley, 0.0, 40
    ),
    "rosenbrock4": Problem(
        "rosenbrock4", _box([f"x{i}" for i in range(4)], -5, 10), rosenbrock, 0.0, 40
    ),
    "mixed_hpo": Problem(
        "mixed_hpo",
        Space(
            {
                "lr": Float(1e-5, 1.0, log=True),
                "dropout": Float(0.0, 0.8),
                "width": Int(16, 1024, log=True),
                "optimizer": Categorical(["sgd", "adam", "adamw", "rmsprop"]),
            }
        ),
        mixed_hpo,
        0.25,
        40,
        truth=mixed_hpo_true,
    ),
}

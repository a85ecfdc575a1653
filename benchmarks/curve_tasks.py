"""Learning-curve tasks for the multi-fidelity benchmark: real trainings and synthetic curves.

A task maps a configuration to its validation loss after each epoch, ``1..epochs``. Real
tasks train seeded, single-threaded networks on scikit-learn's bundled digits (no download) at
a constant learning rate, so the first ``r`` epochs of a run are the same whether it is meant
to run for ``r`` epochs or for all of them: stopping early, continuing and training from
scratch to a lower fidelity (DEHB) all see one curve per configuration.

* ``digits_mlp``: an MLP (depth 1-3, width 16-256), SGD with momentum.
* ``digits_cnn``: two 3x3 conv layers (channels 4-64) and a linear head, Adam.
* ``digits_gru``: a GRU reading each 8x8 digit as a sequence of 8 rows (hidden 8-128, 1-2
  layers), Adam: a small sequence model.
* ``synthetic``: a family of curves ``final(x) + (start(x) - final(x)) * decay(x, e)`` with
  crossing curves, slow starters among the best configurations, fast starters that plateau
  high, noise, and diverging corners (no training: the family's twists on demand).

Curves are computed lazily, epoch by epoch (a run that stops at epoch 3 costs 3 epochs here
too), and the real tasks' are cached by configuration and epoch under
``benchmarks/.cache/curves-<task>-<hash>.jsonl``, so a rerun costs only the optimizers.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from torchtune_hp.space import Categorical, Float, Int, Space

CACHE_DIR = Path(__file__).parent / ".cache"
DIVERGED = 10.0  # a diverging run's loss (what a user clips to; every optimizer sees it)


def param_key(params: dict[str, Any]) -> str:
    """A configuration as a cache key (sorted JSON)."""
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


@dataclass
class CurveTask:
    """``epochs`` per full training; ``train(params)`` yields the validation loss per epoch."""

    name: str
    space: Space
    epochs: int
    train: Callable[[dict[str, Any]], Iterator[float]]
    cached: bool = True  # False for curves cheaper to recompute than to read back
    # The noise-free loss of a configuration at an epoch, where the task knows it (the
    # synthetic family): what the configuration a method would pick is really worth.
    exact: Callable[[dict[str, Any], int], float] | None = None
    _live: dict[str, tuple[Iterator[float], list[float]]] = field(default_factory=dict)
    _cache: dict[str, list[float]] | None = None

    @property
    def cache_path(self) -> Path:
        h = zlib.crc32(repr((sorted(self.space.tunable.items()), self.epochs)).encode())
        return CACHE_DIR / f"curves-{self.name}-{h:08x}.jsonl"

    def _cached(self) -> dict[str, list[float]]:
        if self._cache is None:
            self._cache = {}
            if self.cached and self.cache_path.exists():
                for line in self.cache_path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by an interrupted run
                        continue
                    if not isinstance(row, dict) or "epoch" not in row:
                        continue
                    curve = self._cache.setdefault(row["key"], [])
                    if row["epoch"] == len(curve) + 1:  # epochs arrive in order per run
                        curve.append(row["value"])
        return self._cache

    def cached_curves(self) -> dict[str, list[float]]:
        """The curves trained so far, by :func:`param_key` (none for an uncached task)."""
        return dict(self._cached())

    def value(self, params: dict[str, Any], epoch: int) -> float:
        """The validation loss after ``epoch`` (1-based) epochs of this configuration."""
        key = param_key(params)
        known = self._cached().get(key, [])
        if epoch <= len(known):
            return known[epoch - 1]
        gen, seen = self._live.get(key, (None, []))
        if gen is None or len(seen) < len(known):  # not running here: start over
            gen, seen = self.train(dict(params)), []
            self._live[key] = (gen, seen)
        lines = []
        while len(seen) < epoch:
            v = next(gen)
            seen.append(min(float(v), DIVERGED) if math.isfinite(v) else DIVERGED)
            if len(seen) > len(known):
                lines.append(json.dumps({"key": key, "epoch": len(seen), "value": seen[-1]}))
        if lines and self.cached:
            self._cached()[key] = list(seen)
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a") as f:  # short lines: appends from workers do not mix
                f.write("\n".join(lines) + "\n")
        if len(seen) >= self.epochs:
            self._live.pop(key, None)
        return seen[epoch - 1]


# -- real tasks -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def digits() -> tuple[Any, Any, Any, Any]:
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.long)
    n_val = int(0.3 * len(y))
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def epochs_of(
    model: Any,
    opt: Any,
    bs: int,
    shape: tuple[int, ...],
    after_step: Callable[[], Any] | None = None,
) -> Iterator[float]:
    """Train ``model`` epoch by epoch on digits (inputs reshaped to ``shape``), yielding the
    validation cross-entropy after each epoch; seeded, so a configuration has one curve.
    ``after_step``: called after each optimizer step (a learning-rate schedule's ``step``)."""
    import torch
    from torch import nn

    xt, yt, xv, yv = digits()
    xt, xv = xt.reshape(-1, *shape), xv.reshape(-1, *shape)
    gen = torch.Generator().manual_seed(0)
    while True:
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), bs):
            idx = perm[i : i + bs]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
        model.eval()
        with torch.no_grad():
            value = float(nn.functional.cross_entropy(model(xv), yv))
        yield value  # outside no_grad: a generator paused inside it would leave it on


def mlp_sgd(p: dict[str, Any]) -> tuple[Any, Any]:
    """The seeded MLP (``depth`` x ``width``, ReLU, ``dropout``) and its SGD optimizer
    (``lr``, ``momentum``, Nesterov when there is momentum, ``weight_decay``)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    w_in = 64
    for _ in range(p["depth"]):
        layers += [nn.Linear(w_in, p["width"]), nn.ReLU(), nn.Dropout(p["dropout"])]
        w_in = p["width"]
    model = nn.Sequential(*layers, nn.Linear(w_in, 10))
    opt = torch.optim.SGD(
        model.parameters(),
        lr=p["lr"],
        momentum=p["momentum"],
        nesterov=p["momentum"] > 0,
        weight_decay=p["weight_decay"],
    )
    return model, opt


def train_mlp(p: dict[str, Any]) -> Iterator[float]:
    return epochs_of(*mlp_sgd(p), p["batch_size"], (64,))


def train_cnn(p: dict[str, Any]) -> Iterator[float]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    c1, c2 = p["channels"], 2 * p["channels"]
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(p["dropout"]),
        nn.Linear(c2 * 16, 10),
    )
    opt = torch.optim.Adam(
        model.parameters(), lr=p["lr"], betas=(p["beta1"], 0.999), weight_decay=p["weight_decay"]
    )
    return epochs_of(model, opt, p["batch_size"], (1, 8, 8))


def gru_model(hidden: int, layers: int, dropout: float) -> Any:
    """A GRU over the 8 rows of a digit; its last hidden state feeds a linear head."""
    from torch import nn

    class GRUClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(8, hidden, layers, batch_first=True, dropout=dropout * (layers > 1))
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, 10)

        def forward(self, x: Any) -> Any:
            out, _ = self.gru(x)
            return self.head(self.drop(out[:, -1]))

    return GRUClassifier()


def train_gru(p: dict[str, Any]) -> Iterator[float]:
    import torch

    torch.manual_seed(0)
    model = gru_model(p["hidden"], p["layers"], p["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    return epochs_of(model, opt, p["batch_size"], (8, 8))


# -- synthetic curves -----------------------------------------------------------------------
def synthetic_exact(p: dict[str, Any], e: int) -> float:
    """The synthetic family's noise-free loss at epoch ``e``: ``final + (start - final) *
    (1 + e / tau)^-1.5``. ``final`` is a Hartmann-like bowl in (x1, x2) with a categorical
    shift; ``tau`` (how slow the start is) grows toward the best region along x3, so the best
    configurations start slowest and their curves cross the fast starters' mid-run; a corner
    of large x4 diverges after a few epochs (the loss shoots to ``DIVERGED``), as high
    learning rates do. Its lowest value at the last epoch is about 0.2349 (x1 0.63, x2 0.18,
    x3 0.17, kind a)."""
    x1, x2, x3, x4 = p["x1"], p["x2"], p["x3"], p["x4"]
    if x4 > 0.85 and e > 2 + int(20 * (1 - x4)):
        return DIVERGED
    shift = {"a": 0.0, "b": 0.08, "c": 0.2}[p["kind"]]
    final = 0.05 + 1.2 * (x1 - 0.65) ** 2 + 0.8 * (x2 - 0.3) ** 2 + 0.3 * x1 * x2 + shift
    final += 0.15 * (1 - x3) * (1 - x3)  # slow starters (large x3) end lower ...
    tau = 0.5 + 12.0 * x3**2  # ... and start slower
    start = 2.3
    return final + (start - final) * (1.0 + e / tau) ** -1.5


def train_synthetic(p: dict[str, Any]) -> Iterator[float]:
    """:func:`synthetic_exact` times ``1 + 0.02 z``, ``z`` a seeded standard normal draw per
    epoch (a validation loss's epoch-to-epoch noise; diverged epochs stay ``DIVERGED``)."""
    rng = np.random.default_rng(zlib.crc32(param_key(p).encode()))
    e = 0
    while True:
        e += 1
        v = synthetic_exact(p, e)
        noise = 0.02 * rng.standard_normal() if v < DIVERGED else 0.0
        yield float(v * (1.0 + noise))


MLP_SPACE = Space(
    {
        "lr": Float(1e-3, 1.0, log=True),
        "momentum": Float(0.0, 0.95),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout": Float(0.0, 0.6),
        "width": Int(16, 256, log=True),
        "depth": Int(1, 3),
        "batch_size": Categorical([64, 128, 256]),
    }
)
CNN_SPACE = Space(
    {
        "lr": Float(1e-4, 1e-1, log=True),
        "beta1": Float(0.5, 0.99),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout": Float(0.0, 0.6),
        "channels": Int(4, 32, log=True),
        "batch_size": Categorical([64, 128, 256]),
    }
)
GRU_SPACE = Space(
    {
        "lr": Float(1e-4, 1e-1, log=True),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout": Float(0.0, 0.5),
        "hidden": Int(8, 128, log=True),
        "layers": Int(1, 2),
        "batch_size": Categorical([64, 128, 256]),
    }
)
SYNTHETIC_SPACE = Space(
    {
        "x1": Float(0.0, 1.0),
        "x2": Float(0.0, 1.0),
        "x3": Float(0.0, 1.0),
        "x4": Float(0.0, 1.0),
        "kind": Categorical(["a", "b", "c"]),
    }
)

EPOCHS = 12


def tasks() -> dict[str, CurveTask]:
    return {
        "synthetic": CurveTask(
            "synthetic",
            SYNTHETIC_SPACE,
            EPOCHS,
            train_synthetic,
            cached=False,
            exact=synthetic_exact,
        ),
        "digits_mlp": CurveTask("digits_mlp", MLP_SPACE, EPOCHS, train_mlp),
        "digits_cnn": CurveTask("digits_cnn", CNN_SPACE, EPOCHS, train_cnn),
        "digits_gru": CurveTask("digits_gru", GRU_SPACE, EPOCHS, train_gru),
    }

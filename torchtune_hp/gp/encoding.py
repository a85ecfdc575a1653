"""The GP's view of a search space.

Notation: ``d`` tunable parameters; the GP input has ``w >= d`` columns. A float or int
parameter owns one column holding its unit-cube coordinate ``u`` (ints and stepped floats
snapped to their grid). A categorical with ``k`` choices owns ``k`` one-hot columns, each
scaled by ``1/sqrt(2)``, so the squared Euclidean distance between two one-hot blocks is
exactly ``[c != c']``: a Hamming-distance kernel inside an ordinary ARD distance, the way
Optuna's GPSampler and CoCaBO treat categories, with one lengthscale per categorical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtune_hp.space import Categorical, Float, Int, Space

_ONE_HOT_SCALE = 1.0 / math.sqrt(2.0)


class GPEncoding:
    """Maps parameter dicts and unit-cube points to GP inputs of shape ``(n, w)`` and back."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.params = list(space.tunable.items())
        param_of_col: list[int] = []
        self.blocks: list[tuple[int, int]] = []  # (first column, width) per parameter
        for i, (_, p) in enumerate(self.params):
            width = len(p.choices) if isinstance(p, Categorical) else 1
            self.blocks.append((len(param_of_col), width))
            param_of_col += [i] * width
        self.d = len(self.params)
        self.w = len(param_of_col)
        self.param_of_col = torch.tensor(param_of_col, dtype=torch.long)
        self.cont_cols = torch.tensor(
            [
                c
                for (c, _), (_, p) in zip(self.blocks, self.params, strict=True)
                if not isinstance(p, Categorical)
            ],
            dtype=torch.long,
        )
        self.cat_blocks = [
            (c, k)
            for (c, k), (_, p) in zip(self.blocks, self.params, strict=True)
            if isinstance(p, Categorical)
        ]

    # -- parameter dicts <-> GP inputs ---------------------------------------------------------
    def from_params(self, points: Sequence[Mapping[str, Any]]) -> Tensor:
        x = torch.zeros(len(points), self.w, dtype=torch.float64)
        for row, point in enumerate(points):
            for (col, _width), (name, p) in zip(self.blocks, self.params, strict=True):
                if isinstance(p, Categorical):
                    x[row, col + p.index(point[name])] = _ONE_HOT_SCALE
                else:
                    x[row, col] = p.encode(point[name])
        return x

    def to_params(self, x: Tensor) -> list[dict[str, Any]]:
        """GP inputs ``(n, w)`` to full parameter dicts (fixed values included)."""
        return [self.space.decode(row) for row in self.to_unit(x).tolist()]

    # -- unit cube <-> GP inputs ---------------------------------------------------------------
    def from_unit(self, u: Tensor) -> Tensor:
        """Unit-cube points ``(n, d)`` (e.g. Sobol draws) to snapped GP inputs ``(n, w)``."""
        x = torch.zeros(u.shape[0], self.w, dtype=u.dtype, device=u.device)
        for i, ((col, width), (_, p)) in enumerate(zip(self.blocks, self.params, strict=True)):
            if isinstance(p, Categorical):
                idx = (u[:, i] * width).long().clamp(0, width - 1)
                x[torch.arange(u.shape[0], device=u.device), col + idx] = _ONE_HOT_SCALE
            else:
                x[:, col] = u[:, i]
        return self.snap(x)

    def to_unit(self, x: Tensor) -> Tensor:
        """GP inputs ``(n, w)`` to unit-cube points ``(n, d)`` that decode to the same values."""
        u = torch.empty(x.shape[0], self.d, dtype=torch.float64)
        xc = x.detach().cpu().double()
        for i, ((col, width), (_, p)) in enumerate(zip(self.blocks, self.params, strict=True)):
            if isinstance(p, Categorical):
                u[:, i] = (xc[:, col : col + width].argmax(-1).double() + 0.5) / width
            else:
                u[:, i] = xc[:, col].clamp(0, 1)
        return u

    def snap(self, x: Tensor) -> Tensor:
        """Round int and stepped-float columns onto their grids (in place; returns ``x``)."""
        for (col, _), (_, p) in zip(self.blocks, self.params, strict=True):
            if isinstance(p, Int) or (isinstance(p, Float) and p.step is not None):
                x[:, col] = _snap_column(p, x[:, col])
        return x

    def set_categorical(self, x: Tensor, block: int, choice: int) -> None:
        """Set categorical block ``block`` (an index into ``cat_blocks``) to ``choice``."""
        col, width = self.cat_blocks[block]
        x[:, col : col + width] = 0.0
        x[:, col + choice] = _ONE_HOT_SCALE

    def column_scale(self, lengthscale: Tensor) -> Tensor:
        """Per-parameter lengthscales ``(d,)`` expanded to the ``w`` columns."""
        return lengthscale[..., self.param_of_col.to(lengthscale.device)]


def _snap_column(p: Int | Float, u: Tensor) -> Tensor:
    """Vectorized ``encode(decode(u))`` for an int or stepped float: the value's own ``u``."""
    if isinstance(p, Int):
        half = 0.5 * p.step
        lo, hi = p.low - half, p.high + half
        if p.log:
            lo = max(lo, 0.5 * p.low)
        step, kmax = p.step, (p.high - p.low) // p.step
    else:
        lo, hi = p.low, p.high
        step = p.step or 1.0
        kmax = math.floor((p.high - p.low) / step + 1e-9)
    tlo, thi = (math.log(lo), math.log(hi)) if p.log else (lo, hi)
    t = tlo + u.clamp(0, 1) * (thi - tlo)
    value = torch.exp(t) if p.log else t
    k = torch.round((value - p.low) / step).clamp(0, kmax)
    snapped = p.low + k * step
    ts = torch.log(snapped) if p.log else snapped
    return ((ts - tlo) / (thi - tlo)).clamp(0, 1)

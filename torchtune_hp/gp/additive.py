"""An additive GP for the sampler's Thompson step: the objective as a sum of one-parameter
functions.

A product kernel learns from a point only about its neighbourhood in every coordinate at once,
so a coordinate that sits in the worse of two basins (Styblinski-Tang: each coordinate has a
well at -2.9 and a shallower one at 2.7) stays there: the trials that show the better basin in
that coordinate lie far away in the others, and the model expects nothing at the incumbent
with that one coordinate moved. An additive model pools every trial's evidence per
coordinate (main effects, which carry most of the variation of typical hyperparameter
surfaces: Hutter et al. 2014's fANOVA), and the minimizer of a draw from it is exact and
cheap: the sum's minimum is the sum of each term's, found along the axis lines through the
best trial. As one step of the exploration portfolio it moves several coordinates to other
basins at once, where a draw of the product GP is minimized among random points. The sampler
uses it with ``thompson_model: additive``, or in turn with the product GP's draw
(``alternate``), or, by default (``evidence``), at the Thompson steps where it predicts the
trials better than the product GP, leave-one-out (see the README's Bayesian optimization
section for what each measured).
"""

from __future__ import annotations

import math
from typing import Any

import gpytorch
import numpy as np
import torch
from torch import Tensor

from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import MixedMatern52, Surrogate, matern52
from torchtune_hp.space import Categorical

# Grid points per numeric parameter along its axis line (categoricals: one per choice).
LINE_POINTS = 64


class AdditiveMatern52(MixedMatern52):
    """The mean over parameters of one-parameter Matérn-5/2 kernels, each on its own columns
    (a categorical's one-hot block) with its own lengthscale; k(x, x) = 1, as the product's."""

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params: object) -> Tensor:
        if diag:
            return torch.ones(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
        scale = self.encoding.column_scale(self.lengthscale).reshape(-1)
        sq = (x1.unsqueeze(-2) / scale - x2.unsqueeze(-3) / scale).pow(2)  # (n1, n2, w)
        d2 = sq.new_zeros(*sq.shape[:-1], self.encoding.d)
        d2 = d2.index_add(-1, self.encoding.param_of_col.to(sq.device), sq)  # per parameter
        return matern52(d2).mean(-1)


def additive_kernel(enc: GPEncoding, lengthscale: dict[str, Any]) -> MixedMatern52:
    """The :data:`~torchtune_hp.gp.surrogate.KernelFactory` of the additive GP. Each term is a
    function of one parameter, so its lengthscale prior is the dimension-scaled one for
    d = 1 (median 4.1 in the unit interval; the data pull it down where a term has wells)."""
    options = dict(lengthscale)
    options["lengthscale_prior"] = gpytorch.priors.LogNormalPrior(math.sqrt(2.0), math.sqrt(3.0))
    return AdditiveMatern52(enc, False, **options)


def axis_lines(enc: GPEncoding, u_best: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Unit-cube points ``(m, d)`` on the axis lines through ``u_best`` ``(d,)``, parameter
    after parameter: its grid values (:data:`LINE_POINTS` for a number, one per choice for a
    categorical) and its own value at the end, the others held at ``u_best``; and each
    parameter's grid."""
    rows, grids = [], []
    for i, (_, p) in enumerate(enc.params):
        n = len(p.choices) if isinstance(p, Categorical) else LINE_POINTS
        grid = torch.cat([(torch.arange(n, dtype=torch.float64) + 0.5) / n, u_best[i : i + 1]])
        line = u_best.repeat(len(grid), 1)
        line[:, i] = grid
        rows.append(line)
        grids.append(grid)
    return torch.cat(rows), grids


def additive_draw(
    surrogate: Surrogate, x: Tensor, y: Tensor, pending: Tensor | None, generator: torch.Generator
) -> Tensor:
    """The minimizer, as GP inputs ``(1, w)``, of one posterior draw of ``surrogate`` (an
    additive GP, fitted) given the observations ``(x, y)`` and the ``pending`` points (the
    sampler's constant liar: each at the larger of the model's mean and the average of
    ``y``): along the axis lines through the best of ``x``, each parameter takes the grid
    value where its line's draw is lowest. For an additive draw that is its minimum over the
    whole grid."""
    enc = surrogate.encoding
    u_best = enc.to_unit(x[int(y.argmin())].unsqueeze(0))[0]
    surrogate.condition(x, y)
    if pending is not None and len(pending):
        with torch.no_grad():
            lie = surrogate.posterior(pending)[0].clamp_min(float(y.mean()))
        surrogate.condition(torch.cat([x, pending]), torch.cat([y, lie]))
    points, grids = axis_lines(enc, u_best)
    draw = surrogate.joint_sample(enc.from_unit(points).to(x.device), generator).cpu()
    u = u_best.clone()
    ends = np.cumsum([len(g) for g in grids])
    for i, (grid, end) in enumerate(zip(grids, ends, strict=True)):
        u[i] = grid[int(draw[end - len(grid) : end].argmin())]
    return enc.from_unit(u.unsqueeze(0))

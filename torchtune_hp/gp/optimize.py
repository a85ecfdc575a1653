"""Maximize an acquisition over the GP encoding.

Many quasi-random candidates are scored in one tensor pass; the best ``n_restarts`` are refined
together by one L-BFGS-B run over their stacked continuous columns (the summed acquisition
separates across restarts, so one call optimizes them all); int columns are then snapped and
each categorical is swept over its choices. Returns every scored point, best first, so the
caller can skip points already evaluated or pending.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from torchtune_hp.gp.encoding import GPEncoding

Acquisition = Callable[[Tensor], Tensor]


def score(acq: Acquisition, x: Tensor, chunk: int = 4096) -> Tensor:
    with torch.no_grad():
        return torch.cat([acq(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def refine(acq: Acquisition, enc: GPEncoding, starts: Tensor, max_iter: int = 30) -> Tensor:
    """L-BFGS-B on the continuous columns of ``starts`` ``(r, w)``, categoricals held fixed."""
    cols = enc.cont_cols.to(starts.device)
    if len(cols) == 0:
        return starts.clone()
    base = starts.detach().clone()
    shape = (len(starts), len(cols))

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.as_tensor(theta, dtype=base.dtype, device=base.device).reshape(shape)
        t.requires_grad_(True)
        x = base.index_copy(1, cols, t)
        value = -acq(x).sum()
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), np.nan_to_num(grad.cpu().numpy().ravel().astype(np.float64))

    theta0 = base[:, cols].cpu().numpy().ravel()
    try:
        res = minimize(
            f,
            theta0,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * theta0.size,
            options={"maxiter": max_iter, "ftol": 1e-6, "gtol": 1e-5},
        )
        theta = res.x if np.all(np.isfinite(res.x)) else theta0
    except (ValueError, RuntimeError):  # a NaN in the line search: keep the starts
        theta = theta0
    t = torch.as_tensor(theta, dtype=base.dtype, device=base.device).reshape(shape)
    return enc.snap(base.index_copy(1, cols, t))


def sweep_categoricals(acq: Acquisition, enc: GPEncoding, x: Tensor) -> Tensor:
    """For each point and each categorical in turn, keep the choice with the best value."""
    x = x.clone()
    for b, (_, k) in enumerate(enc.cat_blocks):
        variants = x.repeat(k, 1)  # (k * r, w): choice j for rows j*r .. (j+1)*r
        for j in range(k):
            enc.set_categorical(variants[j * len(x) : (j + 1) * len(x)], b, j)
        values = score(acq, variants).reshape(k, len(x))
        x = variants.reshape(k, len(x), -1)[values.argmax(0), torch.arange(len(x))]
    return x


def maximize(
    acq: Acquisition, enc: GPEncoding, candidates: Tensor, n_restarts: int = 10
) -> tuple[Tensor, Tensor]:
    """All scored points ``(m, w)`` and their values ``(m,)``, sorted best first."""
    values = score(acq, candidates)
    top = values.argsort(descending=True)[:n_restarts]
    refined = sweep_categoricals(acq, enc, refine(acq, enc, candidates[top]))
    pool = torch.cat([refined, candidates])
    pool_values = torch.cat([score(acq, refined), values])
    order = pool_values.argsort(descending=True)
    return pool[order], pool_values[order]

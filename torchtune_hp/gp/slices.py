"""One-dimensional views of a fitted surrogate, for the study's TensorBoard pictures.

Each slice moves one hyperparameter across its range with the others held at the suggestion
(so the dashed line marks a point the picture really passes through), and reports the posterior
band and the acquisition there. The model works on warped values; the band is mapped back to the
objective's units through the observed pairs (warped, original), which the warping keeps in the
same order, so the mapping is monotone: linear interpolation between them, linear extrapolation
past the ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import Surrogate
from torchtune_hp.samplers.explain import Explanation, SliceView
from torchtune_hp.space import Categorical, Float, Int, Space


def unwarp(warped: np.ndarray, original: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A monotone map from the model's (warped) scale back to the objective's."""
    order = np.argsort(warped, kind="stable")
    xs, ys = warped[order], original[order]
    xs, first = np.unique(xs, return_index=True)
    ys = ys[first]
    if len(xs) < 2:
        return lambda w: np.full_like(w, ys[0] if len(ys) else 0.0)
    lo_slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
    hi_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])

    def f(w: np.ndarray) -> np.ndarray:
        out = np.interp(w, xs, ys)
        out = np.where(w < xs[0], ys[0] + lo_slope * (w - xs[0]), out)
        return np.where(w > xs[-1], ys[-1] + hi_slope * (w - xs[-1]), out)

    return f


def _axis_points(
    enc: GPEncoding, space: Space, name: str, base: torch.Tensor, n: int
) -> torch.Tensor:
    """Rows equal to ``base`` except along ``name``: every choice, or ``n`` values over its
    range and ``base``'s own (deduplicated after snapping, for integers)."""
    i = list(space.tunable).index(name)
    col, width = enc.blocks[i]
    p = space.params[name]
    if isinstance(p, Categorical):
        rows = base.repeat(width, 1)
        block = [c for c, _ in enc.cat_blocks].index(col)
        for choice in range(width):
            enc.set_categorical(rows[choice : choice + 1], block, choice)
        return rows
    # the grid plus the base point's own value: the slice passes exactly through it, even
    # where the model bends sharply between grid points
    u = torch.cat([torch.linspace(0, 1, n, dtype=base.dtype), base[0, col : col + 1].cpu()])
    rows = base.repeat(n + 1, 1)
    rows[:, col] = torch.sort(u).values.to(rows.device)
    rows = enc.snap(rows)
    return torch.unique(rows, dim=0) if isinstance(p, Int) else rows


def explain(
    space: Space,
    surrogate: Surrogate,
    observed: list[Mapping[str, Any]],
    values: np.ndarray,
    warped: np.ndarray,
    suggestion: Mapping[str, Any],
    acquisition: Callable[[torch.Tensor], torch.Tensor],
    acq_label: str,
    importance: dict[str, float],
    sign: float = 1.0,
    n_points: int = 80,
    kinds: list[str] | None = None,
    suggested_by: str = "",
) -> Explanation:
    """Slices through the suggestion for each tunable parameter. ``values`` are the observed
    objective values times ``sign`` (lower is better) and ``warped`` the model's targets for
    them; ``sign`` turns them back into the user's values. ``kinds`` says which observations
    are complete trials (the incumbent is the best of those), pruned or failed ones."""
    enc = surrogate.encoding
    back = unwarp(warped, values)
    kinds = kinds or ["complete"] * len(values)
    complete = [i for i, k in enumerate(kinds) if k == "complete"] or list(range(len(values)))
    best = min(complete, key=lambda i: values[i])
    base = enc.from_params([suggestion]).to(surrogate.device)
    slices = []
    for name in space.tunable:
        p = space.params[name]
        rows = _axis_points(enc, space, name, base, n_points)
        with torch.no_grad():
            mean, var = surrogate.posterior(rows)
            acq = acquisition(rows)
        m, s = mean.cpu().numpy(), var.sqrt().cpu().numpy()
        ends = sign * back(m - 2 * s), sign * back(m + 2 * s)  # swapped when sign < 0
        slices.append(
            SliceView(
                name=name,
                x=[row[name] for row in enc.to_params(rows)],
                mean=sign * back(m),
                lower=np.minimum(*ends),
                upper=np.maximum(*ends),
                acquisition=acq.cpu().numpy(),
                observed_x=[o[name] for o in observed],
                observed_y=sign * values,
                observed_kind=list(kinds),
                incumbent=observed[best][name],
                incumbent_value=float(sign * values[best]),
                suggestion=suggestion[name],
                log=isinstance(p, (Float, Int)) and p.log,
                categorical=isinstance(p, Categorical),
            )
        )
    return Explanation(
        slices,
        importance,
        acq_label,
        len(values),
        lower_is_better=sign > 0,
        suggested_by=suggested_by,
    )

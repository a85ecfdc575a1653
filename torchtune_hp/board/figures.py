"""The study's pictures, drawn with matplotlib (Agg, no screen) into PNG bytes.

``slices_png``: one panel per hyperparameter: the posterior mean and its ±2σ band along that
axis through the incumbent, every observed trial projected onto the axis, the incumbent, the
next suggestion, and below it the acquisition. Log parameters get a log axis; the value axis is
cut at the observations' 90th percentile (10th when higher is better), so a few diverging trials
do not flatten the picture. ``importance_png``: one bar per hyperparameter.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from torchtune_hp.samplers.explain import Explanation, SliceView

NCOLS = 3


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _pyplot().close(fig)
    return buf.getvalue()


def _value_limits(views: list[SliceView], lower_is_better: bool) -> tuple[float, float]:
    obs = np.concatenate([v.observed_y for v in views])
    means = np.concatenate([v.mean for v in views])
    if lower_is_better:
        lo = min(obs.min(), means.min())
        hi = max(np.percentile(obs, 90), np.percentile(means, 90))
    else:
        lo = min(np.percentile(obs, 10), np.percentile(means, 10))
        hi = max(obs.max(), means.max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return float(lo - pad), float(hi + pad)


def _log_axis(xs: np.ndarray, *axes: Any) -> None:
    """Log x axes in plain numbers: at powers of ten, and also at 2 and 5 times them when the
    range spans two decades or less."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if math.log10(xs.max() / xs.min()) <= 2 else (1.0,)
    for a in axes:
        a.set_xscale("log")
        a.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        a.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        a.xaxis.set_minor_formatter(NullFormatter())


def _slice_panel(ax: Any, acq_ax: Any, v: SliceView, metric: str, acq_label: str) -> None:
    if v.categorical:
        labels = [str(c) for c in v.x]
        pos = {c: i for i, c in enumerate(labels)}
        xs = np.arange(len(labels))
        ax.errorbar(
            xs,
            v.mean,
            yerr=[v.mean - v.lower, v.upper - v.mean],
            fmt="o",
            color="C0",
            capsize=6,
            label="mean ± 2σ",
        )
        rng = np.random.default_rng(0)
        ox = np.array([pos[str(o)] for o in v.observed_x]) + rng.uniform(
            -0.15, 0.15, len(v.observed_x)
        )
        acq_ax.plot(xs, v.acquisition, "o", color="C2")
        acq_ax.set_xlim(-0.5, len(labels) - 0.5)
        inc, nxt = pos[str(v.incumbent)], pos[str(v.suggestion)]
        for a in (ax, acq_ax):
            a.set_xticks(xs, labels)
    else:
        xs = np.asarray(v.x, dtype=float)
        ax.plot(xs, v.mean, color="C0", label="mean ± 2σ")
        ax.fill_between(xs, v.lower, v.upper, color="C0", alpha=0.2)
        ox = np.asarray(v.observed_x, dtype=float)
        acq_ax.plot(xs, v.acquisition, color="C2")
        inc, nxt = float(v.incumbent), float(v.suggestion)
        if v.log:
            _log_axis(xs, ax, acq_ax)
    ax.scatter(ox, v.observed_y, s=14, color="0.35", zorder=3, label="trials")
    ax.scatter(
        [inc], [v.incumbent_value], s=90, marker="*", color="C3", zorder=4, label="incumbent"
    )
    for a in (ax, acq_ax):
        a.axvline(nxt, color="C1", linestyle="--", linewidth=1.2)
    ax.set_title(f"{v.name}{' (log)' if v.log else ''}", fontsize=10)
    ax.set_ylabel(metric, fontsize=8)
    acq_ax.set_ylabel(acq_label, fontsize=7)
    acq_ax.set_xlabel(v.name, fontsize=8)
    ax.tick_params(labelbottom=False, labelsize=7)
    acq_ax.tick_params(labelsize=7)


def slices_png(expl: Explanation, metric: str, trial: int) -> bytes:
    plt = _pyplot()
    d = len(expl.slices)
    ncols = min(NCOLS, d)
    nrows = math.ceil(d / ncols)
    fig = plt.figure(figsize=(4.2 * ncols, 3.8 * nrows + 0.6))
    outer = fig.add_gridspec(nrows, ncols, hspace=0.4, wspace=0.35)
    ylim = _value_limits(expl.slices, expl.lower_is_better)
    for i, view in enumerate(expl.slices):
        cell = outer[divmod(i, ncols)].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
        ax = fig.add_subplot(cell[0])
        acq_ax = fig.add_subplot(cell[1], sharex=ax)
        _slice_panel(ax, acq_ax, view, metric, expl.acq_label)
        ax.set_ylim(*ylim)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"GP surrogate before trial {trial} ({expl.n_observations} observations); "
        "others held at the incumbent (★), dashed = next suggestion",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9)
    return _png(fig)


def importance_png(importance: dict[str, float], trial: int) -> bytes:
    plt = _pyplot()
    names = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(names) + 1.2))
    ax.barh(names, [importance[n] for n in names], color="C0")
    ax.set_xlabel("share of relevance (1 / ARD lengthscale, normalized)", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title(f"hyperparameter importance at trial {trial}", fontsize=10)
    fig.tight_layout()
    return _png(fig)

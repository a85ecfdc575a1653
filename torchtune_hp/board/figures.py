"""The study's pictures, drawn with matplotlib (Agg, no screen) into PNG bytes.

``slices_png``: one panel per hyperparameter: the posterior mean and its ±2σ band along that
axis through the suggestion (the dashed line), every observed trial projected onto the axis,
the best complete trial (★), and below it the acquisition. Log parameters get a log axis. The
value axis is scaled to the complete trials: pruned trials (whose early values would flatten
it) and failed ones (imputed as the worst) beyond it sit on its edge as open markers. The title
says how the suggestion was chosen (an acquisition maximizer or a Thompson draw).
``importance_png``: one bar per hyperparameter.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from torchtune_hp.samplers.explain import Explanation, SliceView

NCOLS = 3


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def drawing() -> Iterator[None]:
    """Matplotlib's remarks on our pictures are not the user's business (they reached the
    terminal as ``warning: Glyph 128578 missing from font(s) DejaVu Sans`` for an emoji in a
    categorical value, and ``Tight layout not applied`` for a long parameter name): the
    picture is drawn anyway, with a box for the glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Glyph \d+ .*missing from", UserWarning)
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        yield


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    pyplot().close(fig)
    return buf.getvalue()


def value_limits(values: Sequence[float], fallback: Sequence[float] = ()) -> tuple[float, float]:
    """A value axis over the finite ``values`` (the complete trials'), else over the
    ``fallback``'s, with a margin; the study views and the GP pictures share it."""

    def finite(xs: Sequence[float]) -> list[float]:
        return [float(x) for x in xs if x is not None and math.isfinite(x)]

    vals = np.array(finite(values) or finite(fallback))
    if not len(vals):
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.1)
    return lo - pad, hi + pad


def log_axis(xs: np.ndarray, *axes: Any, axis: str = "x") -> None:
    """Log axes in plain numbers: at powers of ten, and also at 2 and 5 times them when the
    range spans two decades or less."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if math.log10(xs.max() / xs.min()) <= 2 else (1.0,)
    for a in axes:
        which = a.xaxis if axis == "x" else a.yaxis
        (a.set_xscale if axis == "x" else a.set_yscale)("log")
        which.set_major_locator(LogLocator(base=10, subs=subs))
        which.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        which.set_minor_formatter(NullFormatter())


def _slice_panel(
    ax: Any, acq_ax: Any, v: SliceView, metric: str, acq_label: str, ylim: tuple[float, float]
) -> None:
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
        ox = np.array([pos[str(o)] for o in v.observed_x], dtype=float) + rng.uniform(
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
            log_axis(xs, ax, acq_ax)
    lo, hi = ylim
    oy = np.asarray(v.observed_y, dtype=float)
    kind = np.array(v.observed_kind)
    done, inside = kind == "complete", (oy >= lo) & (oy <= hi)
    ax.scatter(
        ox[done & inside], oy[done & inside], s=14, color="0.35", zorder=3, label="complete trials"
    )
    other = ~(done & inside)
    if other.any():  # beyond the complete trials' range, or pruned/failed: on the edge, open
        ax.scatter(
            ox[other],
            np.clip(oy[other], lo, hi),
            s=18,
            facecolors="none",
            edgecolors="0.45",
            zorder=3,
            clip_on=False,
            label="pruned, failed or off-scale",
        )
    ax.scatter(
        [inc], [v.incumbent_value], s=90, marker="*", color="C3", zorder=4, label="best so far"
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
    """``trial``: the trial the suggestion is for (or, after the study, how many ended)."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    d = len(expl.slices)
    ncols = min(NCOLS, d)
    nrows = math.ceil(d / ncols)
    fig = plt.figure(figsize=(4.2 * ncols, 3.8 * nrows + 1.1))
    outer = fig.add_gridspec(nrows, ncols, hspace=0.4, wspace=0.35)
    first = expl.slices[0]  # every slice holds the same observed values
    done = [
        y for y, k in zip(first.observed_y, first.observed_kind, strict=True) if k == "complete"
    ]
    ylim = value_limits(done, list(first.observed_y))
    handles: dict[str, Any] = {}
    for i, view in enumerate(expl.slices):
        cell = outer[divmod(i, ncols)].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
        ax = fig.add_subplot(cell[0])
        acq_ax = fig.add_subplot(cell[1], sharex=ax)
        _slice_panel(ax, acq_ax, view, metric, expl.acq_label, ylim)
        ax.set_ylim(*ylim)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    handles["suggestion"] = Line2D([], [], color="C1", linestyle="--")
    per_row = len(handles) if ncols > 1 else 2  # one panel's width holds two entries a row
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=per_row,
        fontsize=8,
        frameon=False,
    )
    how = f" ({expl.suggested_by})" if expl.suggested_by else ""
    if expl.after_study:
        head = f"GP surrogate after {trial} trials ({expl.n_observations} observations)"
        tail = f"slices through what it would suggest next{how}, dashed"
    else:
        head = f"GP surrogate before trial {trial} ({expl.n_observations} observations)"
        tail = f"slices through the suggestion{how}, dashed"
    # wrapped to the figure's width (about 12 characters an inch at 10 points): a long
    # title, with the warp, the fit and the noise in it, was cut off at both ends
    width_in, height_in = fig.get_size_inches()
    lines = textwrap.wrap(f"{head}; {tail}; ★ = best so far", width=int(width_in * 12))
    fig.suptitle("\n".join(lines), fontsize=10)
    top = 0.98 - (0.45 + 0.22 * len(lines)) / height_in  # the lines, then the panels' titles
    legend_rows = math.ceil(len(handles) / per_row)
    bottom = (0.55 + 0.2 * legend_rows) / height_in  # the legend, then the panels' x labels
    fig.subplots_adjust(left=0.8 / width_in, right=0.98, bottom=bottom, top=top)
    return png_bytes(fig)


def importance_png(importance: dict[str, float], trial: int) -> bytes:
    plt = pyplot()
    names = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(names) + 1.2))
    ax.barh(names, [importance[n] for n in names], color="C0")
    ax.set_xlabel("share of relevance (1 / ARD lengthscale, normalized)", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title(f"hyperparameter importance at trial {trial}", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)

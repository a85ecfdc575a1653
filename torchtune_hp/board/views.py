"""The study views users know from Optuna's plots, drawn from the study's rows (so they can be
redrawn at any time) with matplotlib into PNG bytes.

``history``: every trial by number, coloured by state, with the best-so-far line. ``curves``:
every trial's reported values by step, pruned trials ending in a cross. ``slices``: the objective
against each parameter, from the raw trials (log axes for log parameters). ``pairs``: for two
parameters at a time, the trials placed by both and coloured by the objective. ``parallel``:
parallel coordinates with log axes where the parameter is log (TensorBoard's own view cannot).

The value axis is scaled to the COMPLETE trials; a pruned or diverged trial beyond it sits on
the edge with an open marker, and a FAILED trial (no value) as a red mark along the top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection

from torchtune_hp.board.figures import log_axis, png_bytes, pyplot, value_limits
from torchtune_hp.space import Categorical, Fixed, Float, Int, Space
from torchtune_hp.trial import FrozenTrial, TrialState

MAX_PAIR_PARAMS = 4  # pairs of the first four tunable parameters (6 panels)
STATE_STYLE = {  # colour, marker, label
    TrialState.COMPLETE: ("C0", "o", "complete"),
    TrialState.PRUNED: ("0.55", "x", "pruned"),
    TrialState.FAILED: ("C3", "v", "failed (no value)"),
}


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _numeric_axis(space: Space, name: str) -> tuple[bool, bool, list[Any] | None]:
    """(is it numeric, is it log, the choices of a categorical)."""
    p = space.params[name]
    if isinstance(p, Categorical):
        return False, False, list(p.choices)
    if isinstance(p, Fixed):
        return False, False, [p.value]
    return True, isinstance(p, (Float, Int)) and p.log, None


def _position(value: Any, choices: list[Any] | None) -> float:
    if choices is None:
        return float(value)
    labels = [str(c) for c in choices]
    return float(labels.index(str(value))) if str(value) in labels else -1.0


def _trials_with_value(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state is not TrialState.FAILED and _finite(t.value)]


def history_png(trials: Sequence[FrozenTrial], metric: str, mode: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    complete = [t for t in trials if t.state is TrialState.COMPLETE and _finite(t.value)]
    lim = value_limits([t.value for t in complete], [t.value for t in _trials_with_value(trials)])
    for state, (colour, marker, label) in STATE_STYLE.items():
        chosen = [t for t in trials if t.state is state]
        if not chosen:
            continue
        xs = [t.number for t in chosen]
        if state is TrialState.FAILED:
            ys = [lim[1]] * len(chosen)
        else:
            ys = [min(max(t.value, lim[0]), lim[1]) if _finite(t.value) else lim[1] for t in chosen]
        ax.scatter(xs, ys, c=colour, marker=marker, s=28, label=label, zorder=3, clip_on=False)
    if complete:
        ordered = sorted(complete, key=lambda t: t.number)
        best, xs, ys = None, [], []
        for t in ordered:
            if best is None or (t.value < best if mode == "min" else t.value > best):
                best = t.value
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far", zorder=2)
    ax.set_ylim(*lim)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"optimization history ({len(trials)} trials, {mode} {metric})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return png_bytes(fig)


Forecasts = dict[int, tuple[list[float], list[float], list[float]]]


def curves_png(
    trials: Sequence[FrozenTrial], metric: str, forecasts: Forecasts | None = None
) -> bytes:
    """Every trial's reported values; with ``forecasts`` (trial -> steps, mean, sd from the
    learning-curve model), each forecast trial's predicted rest of the curve, dashed, ±1 sd."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    lim = value_limits(
        [v for t in complete for v in t.intermediate.values()] + [t.value for t in complete],
        [v for t in trials for v in t.intermediate.values()],
    )
    lines: dict[TrialState, list[np.ndarray]] = {}
    ends: list[tuple[int, float]] = []
    for t in sorted(trials, key=lambda t: t.number):
        steps = sorted(s for s, v in t.intermediate.items() if _finite(v))
        if not steps:
            continue
        ys = np.clip([t.intermediate[s] for s in steps], *lim)
        lines.setdefault(t.state, []).append(np.column_stack([steps, ys]))
        if t.state is TrialState.PRUNED:
            ends.append((steps[-1], float(ys[-1])))
    drawn = set(lines)
    for state, segments in lines.items():  # one collection per state: fast for many trials
        colour, _, label = STATE_STYLE.get(state, ("C2", "o", "running"))
        ax.add_collection(
            LineCollection(segments, colors=colour, alpha=0.6, linewidths=1.0, label=label)
        )
    if ends:
        ax.scatter(*zip(*ends, strict=True), marker="x", color="C3", s=30, zorder=3)
    for i, (_, arrays) in enumerate(sorted((forecasts or {}).items())):
        steps, mean, sd = (np.asarray(a, dtype=float) for a in arrays)
        label = "model forecast (±1 sd)" if i == 0 else None
        ax.plot(steps, np.clip(mean, *lim), "--", color="C0", lw=0.9, alpha=0.7, label=label)
        ax.fill_between(
            steps, np.clip(mean - sd, *lim), np.clip(mean + sd, *lim), color="C0", alpha=0.08
        )
        drawn.add("forecast")
    if drawn:
        ax.autoscale_view(scaley=False)
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no trial has reported intermediate values",
            ha="center",
            transform=ax.transAxes,
        )
    ax.set_ylim(*lim)
    ax.set_xlabel("step (as reported)")
    ax.set_ylabel(metric)
    ax.set_title("intermediate values (× = pruned here)", fontsize=10)
    if drawn:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return png_bytes(fig)


def _set_param_axis(ax: Any, space: Space, name: str, which: str = "x") -> None:
    numeric, log, choices = _numeric_axis(space, name)
    if log:
        p = space.params[name]
        log_axis(np.array([float(p.low), float(p.high)]), ax, axis=which)
    elif choices is not None:
        ticks = list(range(len(choices)))
        labels = [str(c) for c in choices]
        (ax.set_xticks if which == "x" else ax.set_yticks)(ticks, labels)
        (ax.set_xlim if which == "x" else ax.set_ylim)(-0.5, len(choices) - 0.5)


def slices_png(trials: Sequence[FrozenTrial], space: Space, metric: str) -> bytes:
    plt = pyplot()
    names = list(space.tunable)
    valued = _trials_with_value(trials)
    complete = [t for t in valued if t.state is TrialState.COMPLETE]
    lim = value_limits([t.value for t in complete], [t.value for t in valued])
    ncols = min(3, max(len(names), 1))
    nrows = max(math.ceil(len(names) / ncols), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    numbers = [t.number for t in complete] or [0]
    for i, name in enumerate(names):
        ax = axes[divmod(i, ncols)]
        _, _, choices = _numeric_axis(space, name)
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(valued)) if choices else 0.0
        xs = np.array([_position(t.params.get(name), choices) for t in valued]) + jitter
        ys = np.clip([t.value for t in valued], *lim)
        done = np.array([t.state is TrialState.COMPLETE for t in valued], dtype=bool)
        if done.any():
            ax.scatter(
                xs[done],
                ys[done],
                c=np.array([t.number for t in valued])[done],
                cmap="viridis",
                vmin=min(numbers),
                vmax=max(max(numbers), 1),
                s=22,
                zorder=3,
            )
        if (~done).any():
            ax.scatter(
                xs[~done], ys[~done], marker="x", color="0.55", s=22, zorder=2, clip_on=False
            )
        _set_param_axis(ax, space, name)
        ax.set_ylim(*lim)
        ax.set_title(name + (" (log)" if _numeric_axis(space, name)[1] else ""), fontsize=10)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(names), nrows * ncols):
        axes[divmod(k, ncols)].axis("off")
    fig.suptitle(
        "objective against each parameter (colour = trial number, × = pruned)", fontsize=10
    )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.88, wspace=0.35, hspace=0.45)
    return png_bytes(fig)


def pairs_png(trials: Sequence[FrozenTrial], space: Space, metric: str, mode: str) -> bytes:
    plt = pyplot()
    names = list(space.tunable)[:MAX_PAIR_PARAMS]
    complete = [t for t in trials if t.state is TrialState.COMPLETE and _finite(t.value)]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if not pairs or not complete:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "needs two parameters and a complete trial", ha="center")
        return png_bytes(fig)
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    values = np.array([t.value for t in complete])
    lo, hi = value_limits(values)
    best = complete[int(np.argmin(values) if mode == "min" else np.argmax(values))]
    cmap = "viridis_r" if mode == "max" else "viridis"
    scatter = None
    for k, (a, b) in enumerate(pairs):
        ax = axes[divmod(k, ncols)]
        ca, cb = _numeric_axis(space, a)[2], _numeric_axis(space, b)[2]
        xs = [_position(t.params.get(a), ca) for t in complete]
        ys = [_position(t.params.get(b), cb) for t in complete]
        scatter = ax.scatter(xs, ys, c=values, cmap=cmap, vmin=lo, vmax=hi, s=26)
        ax.scatter(
            [_position(best.params[a], ca)],
            [_position(best.params[b], cb)],
            marker="*",
            s=160,
            color="C3",
            edgecolors="k",
            zorder=4,
        )
        _set_param_axis(ax, space, a, "x")
        _set_param_axis(ax, space, b, "y")
        ax.set_xlabel(a, fontsize=8)
        ax.set_ylabel(b, fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(pairs), nrows * ncols):
        axes[divmod(k, ncols)].axis("off")
    fig.suptitle(f"pairs of parameters, colour = {metric} (★ = best)", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.86, bottom=0.1, top=0.9, wspace=0.35, hspace=0.35)
    if scatter is not None:
        fig.colorbar(scatter, cax=fig.add_axes((0.89, 0.15, 0.02, 0.7)), label=metric)
    return png_bytes(fig)


def _unit(value: Any, space: Space, name: str) -> float:
    """A parameter's value on its axis, from 0 to 1 (log where the parameter is log)."""
    p = space.params[name]
    if isinstance(p, (Float, Int)):
        lo, hi, v = float(p.low), float(p.high), float(value)
        if p.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return (v - lo) / (hi - lo) if hi > lo else 0.5
    choices = [str(c) for c in (p.choices if isinstance(p, Categorical) else [p.value])]
    return choices.index(str(value)) / max(len(choices) - 1, 1) if str(value) in choices else 0.5


def _axis_labels(space: Space, name: str) -> tuple[str, str]:
    p = space.params[name]
    if isinstance(p, (Float, Int)):
        return f"{p.low:g}", f"{p.high:g}"
    choices = [str(c) for c in (p.choices if isinstance(p, Categorical) else [p.value])]
    return choices[0], choices[-1]


def parallel_png(trials: Sequence[FrozenTrial], space: Space, metric: str, mode: str) -> bytes:
    plt = pyplot()
    names = list(space.tunable)
    complete = [t for t in trials if t.state is TrialState.COMPLETE and _finite(t.value)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * (len(names) + 1)), 4.4))
    if not complete or not names:
        ax.axis("off")
        why = "no tunable parameter" if not names else "no complete trial yet"
        ax.text(0.5, 0.5, why, ha="center")
        return png_bytes(fig)
    values = np.array([t.value for t in complete])
    lo, hi = float(values.min()), float(values.max())
    cmap = plt.get_cmap("viridis_r" if mode == "max" else "viridis")
    order = np.argsort(-values if mode == "min" else values)  # the best drawn last, on top
    shade = (values - lo) / (hi - lo) if hi > lo else np.full(len(values), 0.5)
    xs = np.arange(len(names) + 1)
    segments = [
        np.column_stack([xs, [*(_unit(complete[i].params[n], space, n) for n in names), shade[i]]])
        for i in order
    ]
    ax.add_collection(
        LineCollection(segments, colors=cmap(shade[order]), alpha=0.7, linewidths=1.2)
    )
    ax.set_xlim(-0.3, len(names) + 0.3)
    for k, name in enumerate(names):
        bottom, top = _axis_labels(space, name)
        ax.axvline(k, color="0.3", linewidth=0.8)
        ax.text(k, -0.06, bottom, ha="center", va="top", fontsize=7)
        ax.text(k, 1.06, top, ha="center", va="bottom", fontsize=7)
    k = len(names)
    ax.axvline(k, color="0.3", linewidth=0.8)
    ax.text(k, -0.06, f"{lo:.4g}", ha="center", va="top", fontsize=7)
    ax.text(k, 1.06, f"{hi:.4g}", ha="center", va="bottom", fontsize=7)
    labels = [n + (" (log)" if _numeric_axis(space, n)[1] else "") for n in names] + [metric]
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.xaxis.set_ticks_position("none")
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"parallel coordinates of the complete trials (colour = {metric})", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def study_views(
    trials: Sequence[FrozenTrial],
    space: Space,
    metric: str,
    mode: str,
    forecasts: Forecasts | None = None,
) -> dict[str, bytes]:
    """Every view, by its tag's last part."""
    finished = [t for t in trials if t.state.finished]
    return {
        "history": history_png(finished, metric, mode),
        "curves": curves_png(finished, metric, forecasts),
        "slices": slices_png(finished, space, metric),
        "pairs": pairs_png(finished, space, metric, mode),
        "parallel": parallel_png(finished, space, metric, mode),
    }

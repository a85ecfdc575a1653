"""The learning-curve model: one GPyTorch GP over (configuration, training progress).

Notation: a trial's *resource* ``r`` is the number of values it has reported (as for every
pruner); ``T`` is the horizon, the most reports any COMPLETE trial made (or the pruner's
``max_resource``). A report at resource ``r`` sits at progress ``t = log(r) / log(T)`` in
``[0, 1]`` (``t = 1`` at the end of training; the log spaces early epochs apart, where
curves move fastest; ``kernel: freeze_thaw`` takes ``t = r / T``). Its target is the trial's
running best at ``r`` (what a checkpoint-on-best run keeps, so each curve is monotone), signed
so that lower is better and warped as the sampler's targets are
(:func:`~torchtune_hp.gp.surrogate.warp`). With ``scale: boxcox``, where every signed target
is positive (a loss to minimize, a perplexity, an error rate) they first go through a
Box-Cox transform ``(v**lam - 1) / lam`` whose exponent is fitted to them (maximum
likelihood, at each refit of the hyperparameters): a loss falls roughly geometrically from
an untrained network's level towards a floor, so on its own scale the differences among the
good runs (0.09 against 0.11), which the decisions turn on, are a sliver beside those among
the bad (1.9 against 2.3); the transform, log-like where the exponent is near 0, evens them
out, and a forecast mapped back stays above zero (on the linear scale a validation loss
could be forecast at -0.1). It forecasts better (on ``benchmarks/run_forecast.py`` the rank
correlation with the true final values goes from 0.61 to 0.66 on the MLP and from 0.54 to
0.57 on the GRU, the CNN's stays at 0.67) but its sharper forecasts stop more trials, and the
runs of ``benchmarks/run_curves.py`` end no better (see the README), so ``scale: linear``,
the values as they are, is the default.

The GP input is the sampler's encoding of the configuration plus one numeric column for ``t``.
The kernel (``kernel: matern_decay``, the default) is the sampler's Matérn-5/2 ARD over
configuration and progress together, so the progress gets its own learned lengthscale (the
joint ``(x, r)`` kernel of MOBSTER, Klein et al. 2020), plus freeze-thaw's exponential-decay
term over each configuration's own curve (:mod:`~torchtune_hp.gp.curve_kernel`): a run's
deviation from the shared surface carries along its curve and fades as training goes on.
``matern`` is the Matérn alone; ``freeze_thaw`` is Swersky et al.'s model (a GP over the
configuration for where curves end, plus the decay term). Over 5 seeds of
``benchmarks/run_curves.py`` the default was better than ``matern`` on 6 of the 8 task and
budget pairs and equal on one; ``freeze_thaw`` was worse than both (see the README). A trial's
final value is predicted at ``(x, t=1)``, conditioned on every report of every trial, its own
partial curve included: a slow starter whose configuration resembles trials that finished well
is predicted to finish well, and a fast starter that plateaus early is predicted to plateau.
Stopped trials stay in the data: their curves are evidence like any other.

Each trial contributes its reports at ``r = 1, 2, 3, 4, 6, 8, 12, 16, ...`` and its last one (a
log-spaced thinning: long curves do not swamp the kernel matrix), hyperparameters are fit on at
most ``max_fit_points`` of them (drawn at random) and refit, warm-started, when the data grew
by ``refit_fraction``; the posterior is conditioned on at most ``max_points`` rows (each
trial's last report always among them, the rest drawn at random), so a decision costs the same
at 300 trials as at 3,000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
import torch

from torchtune_hp.gp.curve_kernel import FreezeThawKernel
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.surrogate import KernelFactory, OutputWarp, Surrogate, fit_warp
from torchtune_hp.options import check_choice
from torchtune_hp.space import Float, Space
from torchtune_hp.trial import FrozenTrial, TrialState

PROGRESS = "__progress__"  # the GP input column for t; not a name a user space can hold
# matern_decay (the default): the Matérn over (x, t) plus a decaying deviation per configuration
# (see curve_kernel); matern: a Matérn-5/2 over (x, t), t on a log scale (MOBSTER's joint
# kernel); freeze_thaw: Swersky et al.'s asymptote GP over x plus that decay, t linear
KERNELS = ("matern_decay", "matern", "freeze_thaw")
# linear: the signed targets as they are; boxcox: a fitted Box-Cox transform of them where
# all are positive (see the module docstring)
SCALES = ("linear", "boxcox")


def check_kernel(kernel: str) -> None:
    """Raises ValueError naming the choices when ``kernel`` is not one of :data:`KERNELS`."""
    check_choice("kernel", kernel, KERNELS)


def thinned_resources(n: int) -> list[int]:
    """The resources ``1, 2, 3, 4, 6, 8, 12, 16, 24, ...`` up to ``n``, and ``n`` itself."""
    out = sorted({r for k in range(64) for r in (2**k, 3 * 2**k) if r <= n})
    return out + [n] if n >= 1 and out[-1] != n else out


def running_best(trial: FrozenTrial, sign: float) -> list[float]:
    """The trial's signed running best after each report (lower is better); a report that is
    not finite (a diverging run) ends the curve."""
    out: list[float] = []
    for step in sorted(trial.intermediate):
        v = sign * trial.intermediate[step]
        if not math.isfinite(v):
            break
        out.append(v if not out else min(out[-1], v))
    return out


def expected_improvement(best: float, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``E[max(best - f, 0)]`` for ``f ~ N(mean, sd^2)`` (lower is better), elementwise."""
    sd = np.maximum(sd, 1e-12)
    z = (best - mean) / sd
    cdf = 0.5 * np.vectorize(math.erfc)(-z / math.sqrt(2.0))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return sd * (z * cdf + pdf)


@dataclass(frozen=True)
class FinalPrediction:
    """The model's forecast of one trial's final value, in the study's units and direction."""

    number: int
    resource: int  # reports seen when predicted
    mean: float
    sd: float  # posterior and observation noise together
    p_improve: float  # probability that the final value beats ``incumbent``
    incumbent: float  # the best value reported by any trial so far
    gain: float  # expected improvement of the final value on ``incumbent`` (warped units)


class CurveModel:
    """Fits the GP on a study's curves and forecasts final values; one per study."""

    def __init__(
        self,
        space: Space,
        mode: str,
        device: torch.device,
        max_resource: int | None = None,
        max_fit_points: int = 300,
        max_points: int = 2000,
        refit_fraction: float = 0.2,
        seed: int = 0,
        kernel: str = "matern_decay",
        scale: str = "linear",
    ) -> None:
        check_kernel(kernel)
        check_choice("scale", scale, SCALES)
        self.kernel = kernel
        self.scale = scale
        self.boxcox: float | None = None  # the Box-Cox exponent of the data conditioned on
        self.space = space
        self.sign = 1.0 if mode == "min" else -1.0
        self.device = device
        self.max_resource = max_resource
        self.max_fit_points = max_fit_points
        self.max_points = max_points
        self.refit_fraction = refit_fraction
        self.seed = seed
        self.encoding = GPEncoding(Space({**space.params, PROGRESS: Float(0.0, 1.0)}))
        self.horizon: int | None = None
        self.surrogate: Surrogate | None = None
        self._warm: tuple[np.ndarray, int] | None = None  # raw hyperparameters, n at that fit
        self._out: OutputWarp | None = None  # the output warping of the data conditioned on
        self._range = (0.0, 0.0)  # and the range of its (Box-Cox transformed) signed targets
        self._raw_range = (0.0, 0.0)  # the range of the signed targets themselves
        self._key: tuple | None = None  # what the current conditioning was built from
        self.best_warped = math.inf
        self.best = math.inf
        self._candidates: torch.Tensor | None = None  # encoded, at t = 1
        self._encoded: dict[int, tuple[tuple, torch.Tensor, list[float]]] = {}  # per trial
        self._gain: tuple[tuple | None, float] | None = None

    # -- data --------------------------------------------------------------------------------
    def find_horizon(self, trials: Sequence[FrozenTrial]) -> int | None:
        """``max_resource`` when given, else the most reports of a COMPLETE trial."""
        if self.max_resource is not None:
            return self.max_resource
        done = [len(t.intermediate) for t in trials if t.state is TrialState.COMPLETE]
        return max(done) if done and max(done) > 0 else None

    def progress(self, resource: int) -> float:
        """``log(r) / log(T)``; ``r / T`` for ``freeze_thaw``, whose covariance already fades
        with the sum of progresses."""
        assert self.horizon is not None
        if self.horizon <= 1:
            return 1.0
        if self.kernel == "freeze_thaw":
            return min(1.0, max(resource, 1) / self.horizon)
        return min(1.0, math.log(max(resource, 1)) / math.log(self.horizon))

    def _kernel_factory(self) -> KernelFactory | None:
        if self.kernel == "matern":
            return None
        column = self.encoding.blocks[-1][0]  # PROGRESS is the encoding's last parameter
        joint = self.kernel == "matern_decay"
        return lambda encoding, lengthscale: FreezeThawKernel(
            encoding, column, joint, **lengthscale
        )

    def _rows(
        self, trials: Sequence[FrozenTrial]
    ) -> tuple[torch.Tensor | None, list[float], np.ndarray]:
        """GP inputs ``(n, w)``, signed targets and a mask of each trial's last row, over
        every trial's thinned curve; a trial's rows are encoded once per state of its curve
        (encoding is the slow part)."""
        xs: list[torch.Tensor] = []
        values: list[float] = []
        last: list[bool] = []
        for t in trials:
            if t.state is TrialState.FAILED:
                continue
            key = (t.state, self.horizon, hash(tuple(sorted(t.intermediate.items()))))
            cached = self._encoded.get(t.number)
            if cached is None or cached[0] != key:
                cached = (key, *self._encode_trial(t))
                self._encoded[t.number] = cached
            if cached[2]:
                xs.append(cached[1])
                values += cached[2]
                last += [False] * (len(cached[2]) - 1) + [True]
        return (torch.cat(xs) if xs else None), values, np.asarray(last, dtype=bool)

    def _encode_trial(self, t: FrozenTrial) -> tuple[torch.Tensor, list[float]]:
        curve = running_best(t, self.sign)
        if not curve:
            if t.state is TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                # an objective that returns without reporting: its value is the final one
                return self.encode([t.params], [1.0]), [self.sign * t.value]
            return torch.zeros(0, self.encoding.w, dtype=torch.float64), []
        rs = thinned_resources(len(curve))
        x = self.encode([t.params] * len(rs), [self.progress(r) for r in rs])
        return x, [curve[r - 1] for r in rs]

    def encode(self, params: Sequence[dict[str, Any]], progress: Sequence[float]) -> torch.Tensor:
        """GP inputs ``(q, w)`` for configurations at training progress ``t``."""
        return self.encoding.from_params(
            [{**p, PROGRESS: float(t)} for p, t in zip(params, progress, strict=True)]
        )

    # -- fitting -----------------------------------------------------------------------------
    def update(self, trials: Sequence[FrozenTrial]) -> bool:
        """Bring the model up to date with ``trials``; False while it cannot forecast yet (no
        COMPLETE trial has shown how long training is, or fewer than 3 reports in all)."""
        self.horizon = self.find_horizon(trials)
        if self.horizon is None:
            return False
        key = (
            self.horizon,
            tuple((t.number, t.state, hash(tuple(t.intermediate.items()))) for t in trials),
        )
        if key == self._key and self.surrogate is not None:
            return True
        x, values, last = self._rows(trials)
        if x is None or len(values) < 3:
            return False
        signed = np.asarray(values, dtype=np.float64)
        n = len(signed)
        warm, n_fit = self._warm if self._warm is not None else (None, 0)
        grown = n - n_fit >= max(1, int(self.refit_fraction * n_fit))
        max_iter = 200 if warm is None else (40 if grown else 0)
        # the exponents are refit with the hyperparameters, reused in between
        boxcox = self._boxcox(signed, refit=bool(max_iter))
        y_raw = signed if boxcox is None else scipy.special.boxcox(signed, boxcox)
        lmbda = self._out.lmbda if self._out is not None and not max_iter else None
        if (boxcox is None) != (self.boxcox is None):  # a warp fit on the other scale
            lmbda = None
        warped, out = fit_warp(y_raw, lmbda)
        y = torch.as_tensor(warped)
        if not bool(torch.isfinite(y).all()) or not float(y.std()) > 0:
            return False
        fit_x, fit_y = x, y
        if n > self.max_fit_points:
            rng = np.random.default_rng([self.seed, n])
            idx = rng.choice(n, self.max_fit_points, replace=False)
            fit_x, fit_y = x[torch.as_tensor(idx)], y[torch.as_tensor(idx)]
        surrogate = Surrogate(self.encoding, self.device, kernel=self._kernel_factory())
        hyper = surrogate.fit(fit_x, fit_y, warm=warm, max_iter=max_iter)
        if max_iter:
            self._warm = (hyper.raw, n)
        if n > self.max_points:  # each trial's last report, then a random draw of the rest
            rng = np.random.default_rng([self.seed, n, 1])
            rest = np.flatnonzero(~last)
            extra = rng.choice(rest, max(self.max_points - int(last.sum()), 0), replace=False)
            keep = torch.as_tensor(np.sort(np.concatenate([np.flatnonzero(last), extra])))
            x, y = x[keep], y[keep]
        surrogate.condition(x, y)
        self.surrogate = surrogate
        self._out, self._range, self.boxcox = out, (float(y_raw.min()), float(y_raw.max())), boxcox
        self._raw_range = (float(signed.min()), float(signed.max()))
        self.best_warped, self.best = float(y.min()), float(signed.min())
        self._key = key
        return True

    def unwarp(self, w: np.ndarray) -> np.ndarray:
        """Warped values back to signed study units (the output warping's exact inverse),
        kept within the observed range widened by its own width on each side (on both
        scales where the values went through the Box-Cox transform, and above zero)."""
        assert self._out is not None
        lo, hi = self._range
        v = np.clip(self._out.inverse(w), lo - (hi - lo), hi + (hi - lo))
        if self.boxcox is None:
            return v
        lam = self.boxcox
        if lam != 0.0:  # the transform's range: above -1/lam, or below it where lam < 0
            v = (
                np.clip(v, -1.0 / lam + 1e-9, None)
                if lam > 0
                else np.clip(v, None, -1.0 / lam - 1e-9)
            )
        raw_lo, raw_hi = self._raw_range
        with np.errstate(all="ignore"):
            back = scipy.special.inv_boxcox(v, lam)
        return np.clip(np.nan_to_num(back, nan=raw_hi, posinf=raw_hi), 0.0, 2 * raw_hi - raw_lo)

    def _boxcox(self, signed: np.ndarray, refit: bool) -> float | None:
        """The Box-Cox exponent for ``signed`` under ``scale: boxcox``: None (the linear scale)
        unless every value is positive; fitted by maximum likelihood when ``refit`` or when
        the last one was on the linear scale (None where that fit fails), else the last one."""
        if self.scale != "boxcox" or not bool(np.all(signed > 0)) or not np.ptp(signed) > 0:
            return None
        if not refit and self.boxcox is not None:
            return self.boxcox
        try:
            lam = float(scipy.stats.boxcox_normmax(signed, method="mle"))
        except (RuntimeError, ValueError):  # scipy found no bracket for the exponent
            return None
        return lam if math.isfinite(lam) else None

    # -- forecasts ---------------------------------------------------------------------------
    def posterior(
        self, x: torch.Tensor, drop: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warped posterior mean and total sd ``(q,)`` at GP inputs ``x`` ``(q, w)``; with
        ``drop`` (a mask over the conditioned rows), as if those rows had not been observed."""
        assert self.surrogate is not None and self.surrogate.hyper is not None
        with torch.no_grad():
            if drop is None:
                mean, var = self.surrogate.posterior(x.to(self.device))
            else:
                mean, var = self.surrogate.posterior_without(x.to(self.device), drop)
        sd = (var + self.surrogate.hyper.noise).sqrt()
        return mean.cpu().numpy(), sd.cpu().numpy()

    def forecast(self, trials: Sequence[FrozenTrial]) -> list[FinalPrediction]:
        """Each trial's predicted final value (call :meth:`update` first)."""
        if not trials:
            return []
        mean, sd = self.posterior(self.encode([t.params for t in trials], [1.0] * len(trials)))
        z = (self.best_warped - mean) / np.maximum(sd, 1e-12)
        p = 0.5 * np.vectorize(math.erfc)(-z / math.sqrt(2.0))
        gain = expected_improvement(self.best_warped, mean, sd)
        lo, mid, hi = (self.unwarp(mean + k * sd) for k in (-1.0, 0.0, 1.0))
        # a running best never gets worse: the final value is at most the best so far
        now = np.array([min(running_best(t, self.sign) or [math.inf]) for t in trials])
        mid = np.minimum(mid, now)
        return [
            FinalPrediction(
                number=t.number,
                resource=len(t.intermediate),
                mean=self.sign * float(mid[i]),
                sd=float(abs(hi[i] - lo[i]) / 2.0),
                p_improve=float(p[i]),
                incumbent=self.sign * self.best,
                gain=float(gain[i]),
            )
            for i, t in enumerate(trials)
        ]

    def new_trial_gain(self, n: int = 512) -> float:
        """The largest expected improvement of a full training of a new configuration, over
        ``n`` fixed quasi-random candidates (warped units): what a fresh trial is worth."""
        if self._gain is not None and self._gain[0] == self._key:
            return self._gain[1]
        if self._candidates is None:
            from torchtune_hp.samplers.sobol import sobol_points

            units = sobol_points(self.space.dim, self.seed + 7, 0, n)
            self._candidates = self.encode([self.space.decode(u) for u in units], [1.0] * n)
        mean, sd = self.posterior(self._candidates)
        gain = float(expected_improvement(self.best_warped, mean, sd).max())
        self._gain = (self._key, gain)
        return gain

    def prior_gain(self, trial: FrozenTrial) -> float:
        """The expected improvement of ``trial``'s final value (warped units) as the model
        forecasts it without the trial's own reports: what its configuration promised when it
        was started. Its rows are found by configuration (the sampler never repeats one);
        a trial without rows in the data gets its plain forecast."""
        assert self.surrogate is not None and self.surrogate.x is not None
        xq = self.encode([trial.params], [1.0])
        cols = torch.arange(self.encoding.w) != self.encoding.blocks[-1][0]  # all but PROGRESS
        x = self.surrogate.x
        own = (x[:, cols] == xq.to(x.device)[:, cols]).all(-1)
        mean, sd = self.posterior(xq, own if bool(own.any()) and not bool(own.all()) else None)
        return float(expected_improvement(self.best_warped, mean, sd)[0])

    def continuation(
        self, trial: FrozenTrial, points: int = 12
    ) -> tuple[list[int], list[float], list[float]]:
        """The predicted rest of a trial's curve: resources, mean and sd in study units."""
        assert self.horizon is not None
        start = max(len(trial.intermediate), 1)
        rs = sorted({int(round(r)) for r in np.geomspace(start, self.horizon, points)})
        mean, sd = self.posterior(
            self.encode([trial.params] * len(rs), [self.progress(r) for r in rs])
        )
        lo, mid, hi = (self.unwarp(mean + k * sd) for k in (-1.0, 0.0, 1.0))
        now = min(running_best(trial, self.sign) or [math.inf])
        mid = np.minimum.accumulate(np.minimum(mid, now))  # a running best only improves
        return rs, list(self.sign * mid), list(np.abs(hi - lo) / 2.0)

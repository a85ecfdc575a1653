"""Bayesian optimization: a GPyTorch GP surrogate, an acquisition, and its optimizer.

What the sampler learns from (one documented rule each):

* COMPLETE trials: their value.
* PRUNED trials: their last reported value, when there is one (a pruned trial was stopped
  because it looked bad, and that early value says so); with ``pruner.name: gp``, the
  learning-curve model's forecast of its final value instead (``final_values``).
* FAILED trials (a raising objective, NaN, inf): the worst observed value, so the model is
  steered away from the region that fails. Interrupted trials (Ctrl-C, a dead driver) are
  ignored: their parameters are not at fault.
* Pending (RUNNING) trials: a "constant liar" fantasy (Ginsbourger et al. 2010) at the larger
  of the posterior mean and the average observed value: the model loses its uncertainty there
  and expects no improvement, so ``k`` asks before any tell give ``k`` distinct, spread-out
  points (a pure kriging believer lets them cluster around the incumbent); an exact duplicate
  of an evaluated or pending point is never suggested.

Numerical failures (a non-PSD kernel matrix after jitter retries, a failed likelihood fit)
never crash the study: that one suggestion falls back to Sobol, with a warning and the reason
kept in ``last_note`` (stored on the trial).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchtune_hp.gp.acquisition import ACQUISITIONS, acquisition_value
from torchtune_hp.gp.additive import additive_draw, additive_kernel
from torchtune_hp.gp.encoding import GPEncoding
from torchtune_hp.gp.optimize import maximize, refine, score, sweep_categoricals
from torchtune_hp.gp.output_warps import EVIDENCE, OUTPUT_WARPS, neg_log_density
from torchtune_hp.gp.slices import explain as explain_slices
from torchtune_hp.gp.surrogate import Surrogate, SurrogateError, warp
from torchtune_hp.gp.threads import torch_threads
from torchtune_hp.options import check_choice
from torchtune_hp.samplers.base import own_draws
from torchtune_hp.samplers.explain import Explanation
from torchtune_hp.samplers.sobol import sobol_points
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial, TrialState, params_key


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


# The sd (unit cube) of the Gaussian perturbations of the best observations among the
# candidates. The endgame's radius starts there and moves by the trust-region rule of TuRBO
# (Eriksson et al. 2019): doubled after SUCCESSES endgame trials in a row improve on the best,
# halved after FAILURES in a row do not, kept within RADIUS_RANGE.
LOCAL_RADIUS = 0.05
RADIUS_RANGE = (0.005, 0.2)
SUCCESSES, FAILURES = 2, 3


def trust_radius(values: Sequence[float], start: int) -> float:
    """The endgame's radius after the trials ``values`` (signed, lower is better, in the order
    they were numbered; inf for a trial without a COMPLETE value), of which those from index
    ``start`` on are the endgame's. An improvement must beat the best by 1e-3 of its size."""
    radius, best, run_ok, run_bad = LOCAL_RADIUS, math.inf, 0, 0
    for i, v in enumerate(values):
        if i >= start:
            if v < (best - 1e-3 * abs(best) if math.isfinite(best) else best):
                run_ok, run_bad = run_ok + 1, 0
            else:
                run_ok, run_bad = 0, run_bad + 1
            if run_ok == SUCCESSES:
                radius, run_ok = min(2 * radius, RADIUS_RANGE[1]), 0
            if run_bad == FAILURES:
                radius, run_bad = max(radius / 2, RADIUS_RANGE[0]), 0
        best = min(best, v)
    return radius


# What the Thompson step draws from (see GPSampler's ``thompson_model``).
THOMPSON_MODELS = ("full", "alternate", "additive", "evidence")
# How a refit chooses the hyperparameters: ``hyper_select``, see GPSampler.
HYPER_SELECT = ("map", "loo", "loo_explore")
INCUMBENTS = ("auto", "observed", "mean")


def _lowest_mean(surrogate: Surrogate, x: torch.Tensor) -> float:
    """The lowest posterior mean at the points ``x`` (the observed ones): an incumbent that
    a lucky draw cannot set."""
    with torch.no_grad():
        return float(surrogate.posterior(x)[0].min())


def default_n_init(dim: int, budget: int | None = None) -> int:
    """Sobol trials before the GP. With the study's total known (``budget``): 2.5 per
    dimension, at most 15 and at most a quarter of the budget, at least 5 (a larger design
    finds more basins where the budget allows, and a short study keeps three quarters of its
    trials for the model); measured over 13 problems and a real network, 10 seeds each (see
    the README). Without one (plain ask/tell): 2 per dimension, 5 to 10 (Optuna uses 10)."""
    if budget is None:
        return min(10, max(5, 2 * dim))
    return max(5, min(15, round(2.5 * dim), budget // 4))


@dataclass
class Observations:
    """What the GP is fit on: parameter dicts and signed values (lower is better)."""

    params: list[dict[str, Any]]
    values: np.ndarray  # (n,)
    kinds: list[str] = field(default_factory=list)  # complete | pruned | failed, per value


def observations(
    trials: Sequence[FrozenTrial], mode: str, forecasts: dict[int, float] | None = None
) -> Observations:
    """``forecasts``: a final value to use for a PRUNED trial in place of its last report."""
    sign = 1.0 if mode == "min" else -1.0
    params, values, kinds, failed = [], [], [], []
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.value is not None:
            value = t.value
            if forecasts and t.state is TrialState.PRUNED and t.number in forecasts:
                value = forecasts[t.number]
            if np.isfinite(value):
                params.append(t.params)
                values.append(sign * value)
                kinds.append(t.state.value.lower())
                continue
        if t.state is TrialState.FAILED and not t.interrupted:
            failed.append(t.params)
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            # a value that is not finite (a diverged run: a NaN report is recorded as inf), or a
            # trial pruned before its first report: what was tried there is bad, as a failure
            failed.append(t.params)
    if values and failed:
        worst = max(values)
        params += failed
        values += [worst] * len(failed)
        kinds += ["failed"] * len(failed)
    return Observations(params, np.asarray(values, dtype=np.float64), kinds)


def _share(name: str, value: float) -> float:
    """An option that is a share of something: a number in [0, 1)."""
    if isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class GPSampler:
    """``sampler.name: gp``. Options: ``acquisition`` (logei | ei | pi | ucb | thompson),
    ``beta`` (ucb's exploration weight), ``xi`` (EI/PI improvement margin), ``n_init`` (Sobol
    trials first; default 2.5 per dimension, 5 to 15 and at most a quarter of the study's
    total where it is known, else 2 per dimension, 5 to 10), ``device`` (cpu, the default: for
    the few hundred points of a study the CPU is faster than a kernel launch, and the GPU stays
    free for training | cuda | auto = cuda when present),
    ``deterministic`` (noise-free objective: noise fixed at 1e-6), ``thompson_every`` (every
    k-th suggestion is the minimizer of one posterior draw instead of the acquisition's
    maximizer, default 4, 0 = never: a cheap exploration step, as in acquisition portfolios,
    that pulls the search out of a local basin where log-EI alone stays; in the benchmarks it
    freed Levy4 and Hartmann6 runs without costing precision on Branin), ``n_candidates`` and
    ``n_restarts`` (acquisition optimizer effort), ``max_fit_points`` (hyperparameters are fit
    on at most this many observations, the best quarter always among them; the posterior always
    uses all of them), ``refit_fraction`` (hyperparameters are refit, warm-started, once the
    observations have grown by this fraction since the last fit: every trial below 20
    observations at the default 0.05, every 5th at 100, every 50th at 1000; the posterior is
    always recomputed with every observation), ``endgame`` (0.3: the share of a study's
    trials, at its end, that refine around the best observations instead of exploring; see
    :meth:`in_endgame`; 0 = never), ``output_warp`` (auto, the default: the Yeo-Johnson warp,
    or the ``floor`` warp where the values are strongly likelier under it; ``yeo_johnson`` or
    ``floor`` to fix one; see :mod:`torchtune_hp.gp.output_warps`), ``thompson_model`` (which
    model the Thompson step draws from: ``full``, the GP itself, its draw minimized among the
    acquisition's candidates; ``additive``, a GP of the sum of one-parameter functions, its
    draw minimized exactly along the axis lines through the best trial, which moves
    coordinates to other basins that the full GP cannot see; ``alternate``, the two in turn;
    ``evidence``, the default, at each Thompson step the additive draw where the additive GP
    predicts the observations better leave-one-out, else the full one; see
    :mod:`torchtune_hp.gp.additive` and the README for where each wins), ``hyper_select``
    (``map``: the hyperparameters that maximize the marginal likelihood and priors; ``loo``:
    each refit also fits from a smooth start, long lengthscales and 10% noise, and keeps
    whichever fit predicts each observation from the others better, leave-one-out, see
    :meth:`~torchtune_hp.gp.surrogate.Surrogate.fit`; ``loo_explore``, the default: ``loo``
    until the endgame, ``map`` in it, where a sharp fit refines the best basin. Without a known
    total (plain ask/tell) there is no endgame and ``loo_explore`` is ``loo``), ``trend_share``
    (0, the default: the single kernel; a share such as 0.3 gives that much of the kernel to the
    same Matérn at lengthscales of at least 0.3 sqrt(d) in the unit cube, a trend that keeps the
    bowl under a rugged objective in view when the fitted lengthscales fall to its ripples; it
    wins on the rugged and valley-shaped test functions and loses on the real network; the
    additive Thompson model and the ``gp`` pruner's curve model keep their own kernels; see
    :class:`~torchtune_hp.gp.surrogate.MixedMatern52` and the README), ``incumbent`` (what EI
    and PI measure improvement against: ``observed``, the lowest observed value; ``mean``, the
    lowest posterior mean at an observed point; ``auto``, the default, ``observed`` until the
    endgame and ``mean`` in it; see :meth:`_incumbent`)."""

    name = "gp"

    def __init__(
        self,
        seed: int = 0,
        acquisition: str = "logei",
        beta: float = 2.0,
        xi: float = 0.0,
        n_init: int | None = None,
        device: str = "cpu",
        deterministic: bool = False,
        thompson_every: int = 4,
        n_candidates: int = 2048,
        n_restarts: int = 10,
        max_fit_points: int = 256,
        refit_fraction: float = 0.05,
        warp_inputs: bool | str = False,
        endgame: float = 0.3,
        output_warp: str = "auto",
        thompson_model: str = "evidence",
        hyper_select: str = "loo_explore",
        trend_share: float = 0.0,
        incumbent: str = "auto",
        mode: str = "min",
    ) -> None:
        check_choice("acquisition", acquisition, ACQUISITIONS)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if not xi >= 0:  # a negative margin credits points for doing worse than the best
            raise ValueError(f"xi must be >= 0, got {xi!r}")
        if n_init is not None and n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {n_init!r}")
        for name, value, low in (
            ("thompson_every", thompson_every, 0),
            ("n_candidates", n_candidates, 16),
            ("n_restarts", n_restarts, 1),
            ("max_fit_points", max_fit_points, 16),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.seed = seed
        self.acquisition = acquisition
        self.beta = float(beta)
        self.xi = float(xi)
        self.n_init = n_init
        self.device = resolve_device(device)
        self.deterministic = bool(deterministic)
        self.thompson_every = thompson_every
        self.n_candidates = n_candidates
        self.n_restarts = n_restarts
        self.max_fit_points = max_fit_points
        if not 0 <= refit_fraction < 1:
            raise ValueError(f"refit_fraction must be in [0, 1), got {refit_fraction!r}")
        self.refit_fraction = float(refit_fraction)
        if warp_inputs not in (True, False, "auto"):
            raise ValueError(f"warp_inputs must be true, false or auto, got {warp_inputs!r}")
        self.warp_inputs: bool | str = "auto" if warp_inputs == "auto" else bool(warp_inputs)
        self.endgame = _share("endgame", endgame)
        check_choice("output_warp", output_warp, ("auto", *OUTPUT_WARPS))
        self.output_warp = output_warp
        check_choice("thompson_model", thompson_model, THOMPSON_MODELS)
        self.thompson_model = thompson_model
        check_choice("hyper_select", hyper_select, HYPER_SELECT)
        self.hyper_select = hyper_select
        self.trend_share = _share("trend_share", trend_share)
        check_choice("incumbent", incumbent, INCUMBENTS)
        self.incumbent = incumbent
        self._additive_fit: dict[tuple[int, str], np.ndarray] = {}  # warm starts
        # thompson_model evidence: the last step's leave-one-out densities (additive, full)
        self._evidence: tuple[float, float] | None = None
        # The study's total number of trials when it is known (``optimize(n_trials)``, a
        # recipe's ``study.trials``: the trial loop sets it); None in plain ask/tell use.
        self.horizon: int | None = None
        self.mode = mode
        self.last_note: str | None = None
        self.surrogate: Surrogate | None = None
        self._view: dict[str, Any] | None = None  # the last GP suggestion, for explain()
        # (width, warped inputs, output warp, smooth start) -> (raw hyperparameters, n)
        self._last_fit: dict[tuple[int, bool, str, bool], tuple[np.ndarray, int]] = {}
        self._warped: dict[int, bool] = {}  # width -> the warp_inputs=auto choice in force
        self._output: dict[int, str] = {}  # width -> the output_warp=auto choice in force
        self.output_in_force = "yeo_johnson"  # the output warp of the last fit
        # Set by the study when its pruner models the curves (pruner gp): trials -> forecast
        # final values of the PRUNED ones.
        self.final_values: Callable[[Sequence[FrozenTrial]], dict[int, float]] | None = None

    # -- the interface -----------------------------------------------------------------------
    def sample(
        self, space: Space, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        self.last_note = None
        self._view = None
        k = own_draws(trials, pending)
        forecasts = self.final_values(trials) if self.final_values is not None else None
        obs = observations(trials, self.mode, forecasts)
        n_init = self.n_init or default_n_init(space.dim, self.horizon)
        if space.dim == 0 or len(obs.values) < max(n_init, 2):
            if space.dim:  # the trials table then tells the design from the model's picks
                self.last_note = (
                    f"initial design (Sobol): the GP starts once {max(n_init, 2)} trials have "
                    f"values, {len(obs.values)} so far"
                )
            return self._sobol(space, k)
        # Small matrices run faster on one thread (see gp.threads); large ones use them all,
        # but only while no trial runs: the cores are then the trials' (workers as many as
        # cores is the usual set-up), and a second thread contending with them made an ask at
        # 620 observations 3-8x slower than one thread did (an overnight soak, 2 workers).
        threads = torch.get_num_threads() if len(obs.values) > 600 and not pending else 1
        radius = self.endgame_radius(trials) if self.in_endgame(trials, pending) else None
        try:
            with torch_threads(threads):
                return self._suggest(space, obs, pending, k, radius, self._additive_turn(k, n_init))
        except (SurrogateError, RuntimeError, ValueError) as e:
            self.last_note = f"gp fell back to Sobol for this trial: {type(e).__name__}: {e}"
            warnings.warn(self.last_note, RuntimeWarning, stacklevel=2)
            return self._sobol(space, k)

    def _sobol(self, space: Space, k: int) -> dict[str, Any]:
        return space.decode(sobol_points(space.dim, self.seed, k, 1)[0])

    def _additive_turn(self, k: int, n_init: int) -> bool:
        """Whether draw ``k``'s Thompson step, if it is one, draws from the additive GP: under
        ``alternate`` every second Thompson step after the initial design (the first is the
        full GP's), a function of ``k`` so that a resumed study goes on in turn."""
        every = self.thompson_every
        if not every or self.thompson_model == "full":
            return False
        steps = (k + 1) // every - n_init // every  # Thompson steps since the design, this one in
        return self.thompson_model in ("additive", "evidence") or steps % 2 == 0

    def _endgame_start(self) -> int:
        assert self.horizon is not None
        return self.horizon - max(1, round(self.endgame * self.horizon))

    def endgame_radius(self, trials: Sequence[FrozenTrial]) -> float:
        """The endgame's search radius now (see :func:`trust_radius`): it grows while
        refining keeps paying (a long valley is followed faster) and shrinks while it does
        not (a sharp optimum is resolved finer). A function of the trials alone, so a
        resumed study goes on with the radius it had."""
        if not self.endgame or self.horizon is None:
            return LOCAL_RADIUS
        sign = 1.0 if self.mode == "min" else -1.0
        done = sorted((t for t in trials if t.counts), key=lambda t: t.number)
        values = [
            sign * t.value
            if t.state is TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
            else math.inf
            for t in done
        ]
        return trust_radius(values, self._endgame_start())

    def in_endgame(self, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]) -> bool:
        """Whether the next trial is among the last ``endgame`` share of the study's
        ``horizon`` (trials that count toward it, pending ones included). There the search
        stops exploring: no Thompson step, and the acquisition is maximized only from
        perturbations of the best observations. A study is judged by the best trial it ends
        with; exploration late in it rarely pays back before the end, refining the best
        basins does (see the README's Bayesian optimization section for the measurements)."""
        if not self.endgame or self.horizon is None:
            return False
        start = self._endgame_start()
        if len(trials) + len(pending) < start:  # counted trials are fewer: skip the Python loop
            return False
        return sum(t.counts for t in trials) + len(pending) >= start

    # -- the GP path -------------------------------------------------------------------------
    def fit(
        self, space: Space, obs: Observations, k: int = 0, smooth: bool | None = None
    ) -> tuple[Surrogate, torch.Tensor]:
        """Fit the surrogate on ``obs`` and condition it on all of them; returns it with the
        warped targets ``(n,)``. ``smooth``: whether the fit also tries the smooth start
        (None: as ``hyper_select`` says outside the endgame)."""
        if smooth is None:
            smooth = self._smooth(endgame=False)
        enc = GPEncoding(space)
        x = enc.from_params(obs.params)
        n = len(obs.values)
        rows = self._fit_rows(obs.values, k)
        out, warped_y = self._output_warp(enc, x, obs.values, rows, smooth)
        self.output_in_force = out
        y = torch.as_tensor(warped_y)
        if not bool(torch.isfinite(y).all()):
            raise SurrogateError("the objective values overflow the output warping")
        fit_x, fit_y = (x, y) if n <= self.max_fit_points else (x[rows], y[rows])
        if self.warp_inputs == "auto" and len(enc.cont_cols):
            chosen = self._warped.get(enc.w)
            if chosen is not None and self._refit_iters(enc.w, chosen, out, n, smooth)[1] == 0:
                surrogate = self._fit_one(enc, fit_x, fit_y, chosen, out, n, smooth)
            else:
                plain = self._fit_one(enc, fit_x, fit_y, False, out, n, smooth)
                warped = self._fit_one(enc, fit_x, fit_y, True, out, n, smooth)
                surrogate = plain
                assert plain.hyper is not None and warped.hyper is not None
                # The better fitted log posterior wins; the warp's priors (two concentrations
                # per numeric column, each LogNormal density below 1 near a = b = 1) are its
                # price, so it has to buy a better likelihood to be used.
                if warped.hyper.loss < plain.hyper.loss:
                    surrogate = warped
                self._warped[enc.w] = surrogate.warp_inputs
        else:
            surrogate = self._fit_one(enc, fit_x, fit_y, self.warp_inputs is True, out, n, smooth)
        surrogate.condition(x, y)
        return surrogate, y

    def _fit_rows(self, values: np.ndarray, k: int) -> np.ndarray:
        """The observations that the hyperparameters are fitted on: all of them up to
        ``max_fit_points``; beyond, the best quarter of that many and a random draw of the
        rest (the same for draw ``k`` wherever it is asked)."""
        n = len(values)
        if n <= self.max_fit_points:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, k, 1])
        order = np.argsort(values, kind="stable")
        keep_best = order[: self.max_fit_points // 4]
        rest = rng.choice(
            order[self.max_fit_points // 4 :], self.max_fit_points - len(keep_best), replace=False
        )
        return np.concatenate([keep_best, rest])

    def _output_warp(
        self,
        enc: GPEncoding,
        x: torch.Tensor,
        values: np.ndarray,
        rows: np.ndarray,
        smooth: bool,
    ) -> tuple[str, np.ndarray]:
        """The output warp in force and the warped values. Under ``auto`` both warps are
        fitted whenever the hyperparameters are (with the inputs plain unless ``warp_inputs``
        is true), and ``floor`` is taken only where the values are more than
        :data:`~torchtune_hp.gp.output_warps.EVIDENCE` nats likelier under it; between refits
        the choice stays, as the hyperparameters do."""
        if self.output_warp != "auto":
            w = OUTPUT_WARPS[self.output_warp](values)
            return (self.output_warp, w.values) if w else ("yeo_johnson", warp(values))
        inputs, n = self.warp_inputs is True, len(values)
        chosen = self._output.get(enc.w)
        if chosen is not None and self._refit_iters(enc.w, inputs, chosen, n, smooth)[1] == 0:
            kept = OUTPUT_WARPS[chosen](values)  # between refits only the warp in force
            if kept is not None:
                return chosen, kept.values
        warps = {name: f(values) for name, f in OUTPUT_WARPS.items()}
        if warps["floor"] is None:
            chosen = "yeo_johnson"
        else:
            score = {}
            for name, w in warps.items():
                assert w is not None
                y = torch.as_tensor(w.values[rows])
                hyper = self._fit_one(enc, x[rows], y, inputs, name, n, smooth).hyper
                assert hyper is not None
                score[name] = neg_log_density(hyper.loss, w, rows)
            margin = score["yeo_johnson"] - score["floor"]
            chosen = "floor" if margin > EVIDENCE else "yeo_johnson"  # nan: the default
            self._output[enc.w] = chosen
        w = warps[chosen]
        assert w is not None
        return chosen, w.values

    def _smooth(self, endgame: bool) -> bool:
        """Whether a fit also tries the smooth start (see ``hyper_select``)."""
        return self.hyper_select == "loo" or (self.hyper_select == "loo_explore" and not endgame)

    def _refit_iters(
        self, width: int, warped: bool, out: str, n: int, smooth: bool
    ) -> tuple[np.ndarray | None, int]:
        """The last fit's raw hyperparameters (the warm start) and the L-BFGS iterations for
        this fit: 200 cold, 40 warm once the data grew by ``refit_fraction``, 0 (reuse the
        last hyperparameters) otherwise. Fits with and without the smooth start keep their
        own."""
        warm, n_fit = self._last_fit.get((width, warped, out, smooth), (None, 0))
        if warm is None:
            return None, 200
        return warm, 40 if n - n_fit >= max(1, int(self.refit_fraction * n)) else 0

    def _fit_one(
        self,
        enc: GPEncoding,
        x: torch.Tensor,
        y: torch.Tensor,
        warped: bool,
        out: str,
        n: int,
        smooth: bool,
    ) -> Surrogate:
        surrogate = Surrogate(
            enc, self.device, self.deterministic, warped, trend_share=self.trend_share
        )
        warm, max_iter = self._refit_iters(enc.w, warped, out, n, smooth)
        hyper = surrogate.fit(x, y, warm=warm, max_iter=max_iter, smooth=smooth)
        if max_iter:
            self._last_fit[(enc.w, warped, out, smooth)] = (hyper.raw, n)
        return surrogate

    def _suggest(
        self,
        space: Space,
        obs: Observations,
        pending: Sequence[FrozenTrial],
        k: int,
        endgame_radius: float | None = None,
        additive: bool = False,
    ) -> dict[str, Any]:
        """``endgame_radius``: None outside the endgame, else its search radius; ``additive``:
        a Thompson step here draws from the additive GP."""
        endgame = endgame_radius is not None
        smooth = self._smooth(endgame)
        surrogate, y = self.fit(space, obs, k, smooth)
        self.surrogate = surrogate
        enc = surrogate.encoding
        dev = self.device
        x = surrogate.x
        assert x is not None
        xp = enc.from_params([t.params for t in pending]).to(dev) if pending else None
        if xp is not None:
            with torch.no_grad():
                yp, _ = surrogate.posterior(xp)
            # Constant liar, never more optimistic than the model: max(mean, average of y).
            lie = yp.clamp_min(float(y.mean()))
            surrogate.condition(torch.cat([x, xp]), torch.cat([y.to(dev), lie]))
        best = self._incumbent(surrogate, x, y, endgame)
        every = self.thompson_every
        step = bool(every and k % every == every - 1) and not endgame
        thompson = self.acquisition == "thompson" or step
        seen = {params_key(p) for p in obs.params} | {params_key(t.params) for t in pending}
        view = {"space": space, "obs": obs, "y": y, "best": best, "thompson": thompson}
        view |= {"radius": endgame_radius, "output_warp": self.output_in_force, "smooth": smooth}
        self._evidence = None
        view["evidence"] = None  # thompson_model evidence: the two GPs' densities, when compared
        if step and additive:
            full = surrogate if self.thompson_model == "evidence" else None
            params = self._additive_point(enc, x, y, self._fit_rows(obs.values, k), xp, k, full)
            view["evidence"] = self._evidence
            if params is not None and params_key(params) not in seen:
                self._view = {**view, "next": params, "endgame": False, "additive": True}
                return params
        # The endgame searches near the best first; where every point there was tried (a small
        # discrete space), the whole space is searched rather than a point repeated.
        for local_only in (True, False) if endgame else (False,):
            radius = endgame_radius if local_only else None
            candidates = self._candidates(enc, x, y, k, radius).to(dev)
            pool = self._rank(surrogate, enc, candidates, k, best, thompson)
            # Decode lazily, 64 at a time: the first chunk nearly always holds a new point.
            for start in range(0, len(pool), 64):
                for params in enc.to_params(pool[start : start + 64]):
                    if params_key(params) not in seen:
                        self._view = {**view, "next": params, "endgame": local_only}
                        return params
        self.last_note = "every candidate was already evaluated or pending: a Sobol point instead"
        return self._sobol(space, k)

    def _incumbent(
        self, surrogate: Surrogate, x: torch.Tensor, y: torch.Tensor, endgame: bool
    ) -> float:
        """The value EI and PI measure improvement against (GP units, lower is better): the
        lowest observation, or the lowest posterior mean at an observed point (``incumbent``;
        ``auto``: the mean in the endgame only). On a noisy objective a lucky draw sets a
        lowest observation the model cannot expect to beat anywhere near it (its posterior
        there is many sds above), so the highest EI is where the variance is largest, at the
        space's corners: in a user's 300-trial study half the endgame's suggestions went to a
        corner while the best trials sat mid-space, though the endgame is there to refine
        them. Before it the lowest observation stays: measured on the real task (10 seeds),
        the mean throughout ended at a median 0.1052 where it ends at 0.1025."""
        if self.incumbent == "observed" or (self.incumbent == "auto" and not endgame):
            return float(y.min())
        return _lowest_mean(surrogate, x)

    def _additive_point(
        self,
        enc: GPEncoding,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: np.ndarray,
        pending: torch.Tensor | None,
        k: int,
        full: Surrogate | None = None,
    ) -> dict[str, Any] | None:
        """The additive GP's Thompson point (see :func:`~torchtune_hp.gp.additive.additive_draw`),
        given the ``pending`` points (GP inputs), its hyperparameters fitted on ``rows`` of the
        observations (the full GP's), warm-started from its last fit and refit on each additive
        step; None where its fit fails, and the full GP's draw serves. With the ``full`` GP
        given (``thompson_model: evidence``) also None where the full GP predicts the fitted
        observations better, leave-one-out: the draw comes from the model the data favour."""
        surrogate = Surrogate(enc, self.device, self.deterministic, kernel=additive_kernel)
        key = (enc.w, self.output_in_force)
        warm = self._additive_fit.get(key)
        try:
            index = torch.as_tensor(rows)
            hyper = surrogate.fit(
                x[index], y[index], warm=warm, max_iter=200 if warm is None else 40
            )
            self._additive_fit[key] = hyper.raw
            if full is not None:
                fx, fy = x[index], y[index]
                self._evidence = (surrogate.loo_density(fx, fy), full.loo_density(fx, fy))
                if self._evidence[0] <= self._evidence[1]:
                    return None
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) % 2**63)
            point = additive_draw(surrogate, x, y.to(x.device), pending, gen)
        except SurrogateError:
            return None
        return enc.to_params(point)[0]

    def _rank(
        self,
        surrogate: Surrogate,
        enc: GPEncoding,
        candidates: torch.Tensor,
        k: int,
        best: float,
        thompson: bool,
    ) -> torch.Tensor:
        """``candidates`` and the acquisition's refined maximizers, best first: by one
        posterior draw (``thompson``), by MACE, or by the acquisition."""
        if thompson:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) % 2**63)
            values = -surrogate.joint_sample(candidates[:1024], gen)
            return candidates[:1024][values.argsort(descending=True)]
        if self.acquisition == "mace":
            return self._mace(surrogate, enc, candidates, k)

        def acq(xq: torch.Tensor) -> torch.Tensor:
            mean, var = surrogate.posterior(xq)
            return acquisition_value(self.acquisition, mean, var, best, self.beta, self.xi)

        return maximize(acq, enc, candidates, self.n_restarts)[0]

    def _mace(
        self, surrogate: Surrogate, enc: GPEncoding, candidates: torch.Tensor, k: int
    ) -> torch.Tensor:
        """HEBO's MACE (Cowen-Rivers et al. 2022): the Pareto set of log EI, log PI and UCB
        (HEBO's growing ``kappa``), improvement measured against the lowest posterior mean at
        an observed point; one member drawn at random, the rest as fallbacks. One posterior
        pass scores all three; the restarts are shared out among them and refined together,
        so a suggestion costs what a single acquisition's does."""
        x = surrogate.x
        assert x is not None
        best = _lowest_mean(surrogate, x)  # HEBO's, whatever ``incumbent`` says
        kappa2 = (2.0 + enc.d / 2.0) * math.log(max(len(x), 2)) + math.log(math.pi**2 / 0.01)

        def acq3(xq: torch.Tensor) -> torch.Tensor:
            mean, var = surrogate.posterior(xq)
            return torch.stack(
                [
                    acquisition_value("logei", mean, var, best, 0.0, self.xi),
                    acquisition_value("pi", mean, var, best, 0.0, self.xi),
                    acquisition_value("ucb", mean, var, best, kappa2, 0.0),
                ],
                -1,
            )

        values = score(acq3, candidates)  # (m, 3), larger is better
        per = max(1, -(-self.n_restarts // 3))
        starts = torch.cat([values[:, j].argsort(descending=True)[:per] for j in range(3)])
        owner = torch.arange(3).repeat_interleave(per).to(candidates.device)

        def own(xq: torch.Tensor) -> torch.Tensor:  # each start climbs its own acquisition
            rows = owner.repeat(len(xq) // len(owner))
            return acq3(xq).gather(1, rows.unsqueeze(1)).squeeze(1)

        refined = sweep_categoricals(own, enc, refine(own, enc, candidates[starts]))
        pool = torch.cat([refined, candidates])
        values = torch.cat([score(acq3, refined), values])
        # The front among the 128 best of each acquisition: O(m^2) over all m would cost
        # more than the model, and a point outside all three top lists is rarely on it.
        top = torch.cat([values[:, j].argsort(descending=True)[:128] for j in range(3)]).unique()
        front = top[pareto_front(values[top])]
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) % 2**63)
        first = front[torch.randint(len(front), (1,), generator=gen)]
        rest = values[:, 0].argsort(descending=True)
        return pool[torch.cat([first, front, rest])]

    def explain(self, n_points: int = 80) -> Explanation | None:
        """Slices of the model behind the last suggestion (see :mod:`torchtune_hp.gp.slices`);
        None when that suggestion did not come from the GP (initial design, fallback)."""
        if self._view is None or self.surrogate is None:
            return None
        v, surrogate = self._view, self.surrogate
        # Thompson and MACE have no single acquisition surface: their slices show log EI.
        name = "logei" if self.acquisition in ("thompson", "mace") else self.acquisition
        label = {"logei": "log EI", "ei": "EI", "pi": "log PI", "ucb": f"UCB (beta={self.beta})"}

        def acq(xq: torch.Tensor) -> torch.Tensor:
            mean, var = surrogate.posterior(xq)
            return acquisition_value(name, mean, var, v["best"], self.beta, self.xi)

        how = "Thompson draw" if v["thompson"] else f"{label[name]} maximizer"
        if v.get("additive"):
            how = "Thompson draw of the additive GP, minimized along the axes through the best"
        if v.get("evidence") is not None:
            add, full = v["evidence"]
            how += (
                f" (leave-one-out log density of the trials: additive GP {add:.3g}, full GP "
                f"{full:.3g})"
            )
        if self.acquisition == "mace" and not v["thompson"]:
            how = "MACE: a random point of the log EI / log PI / UCB Pareto set"
        if v["endgame"]:
            how += f", searched near the best trials (endgame, radius {v['radius']:.3g})"
        if v["output_warp"] == "floor":
            how += "; values modelled on the floor output warp"
        if v["smooth"]:
            assert surrogate.hyper is not None
            noise = surrogate.hyper.noise
            how += f"; hyperparameters: sharp or smooth fit by leave-one-out (noise {noise:.2g})"
        with torch_threads(1):
            return explain_slices(
                v["space"],
                surrogate,
                v["obs"].params,
                v["obs"].values,
                v["y"].cpu().numpy(),
                v["next"],
                acq,
                label[name],
                lengthscale_shares(v["space"], surrogate),
                sign=1.0 if self.mode == "min" else -1.0,
                n_points=n_points,
                kinds=v["obs"].kinds,
                suggested_by=how,
            )

    def explain_trials(
        self, space: Space, trials: Sequence[FrozenTrial], n_points: int = 80
    ) -> Explanation | None:
        """The model on ``trials`` (e.g. when a study ends), sliced through what it would
        suggest next; None where the GP would not suggest (too few trials)."""
        self.sample(space, trials, [])
        expl = self.explain(n_points)
        if expl is not None:
            expl.after_study = True
        return expl

    def _candidates(
        self,
        enc: GPEncoding,
        x: torch.Tensor,
        y: torch.Tensor,
        k: int,
        endgame_radius: float | None = None,
    ) -> torch.Tensor:
        """Scrambled Sobol points over the whole space, plus Gaussian perturbations (sd 0.05
        in the unit cube) of the five best observations, for a sharp local search; in the
        endgame (``endgame_radius`` given) only the perturbations, with that sd."""
        local_only = endgame_radius is not None
        sd = LOCAL_RADIUS if endgame_radius is None else endgame_radius
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) % 2**63)
        best = x.cpu()[y.cpu().argsort()[:5]]
        n_local = max(self.n_candidates // 8, 16)
        local = best.repeat((n_local + len(best) - 1) // len(best), 1)[:n_local].clone()
        cols = enc.cont_cols
        if len(cols):
            noise = sd * torch.randn(len(local), len(cols), generator=gen, dtype=local.dtype)
            local[:, cols] = (local[:, cols] + noise).clamp(0, 1)
        local = enc.snap(local)
        if local_only:
            return local
        u = torch.tensor(sobol_points(enc.d, (self.seed * 7919 + k) % 2**31, 0, self.n_candidates))
        return torch.cat([enc.from_unit(u), local])


def pareto_front(values: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of ``values`` ``(m, k)`` (larger is better) that no other row
    dominates."""
    ge = (values.unsqueeze(1) >= values.unsqueeze(0)).all(-1)  # [i, j]: i >= j everywhere
    gt = (values.unsqueeze(1) > values.unsqueeze(0)).any(-1)
    dominated = (ge & gt).any(0)
    return torch.nonzero(~dominated).squeeze(-1)


def lengthscale_shares(space: Space, surrogate: Surrogate) -> dict[str, float]:
    """``1/l_j`` of the fitted ARD lengthscales, normalized to sum to 1."""
    assert surrogate.hyper is not None
    inv = 1.0 / surrogate.hyper.lengthscale.cpu().double()
    share = (inv / inv.sum()).tolist()
    return dict(zip(space.tunable, share, strict=True))


def importance(space: Space, trials: Sequence[FrozenTrial], mode: str = "min") -> dict[str, float]:
    """Each tunable parameter's relevance, from the fitted ARD lengthscales (see
    :func:`lengthscale_shares`). A parameter the objective ignores gets a long lengthscale and
    a share near 0. Only COMPLETE trials count: a failure (or a stop) says nothing of how the
    parameters move the objective, and taken as the worst value, as the search does, failures
    that have nothing to do with them made an ignored parameter look important."""
    obs = observations([t for t in trials if t.state is TrialState.COMPLETE], mode)
    if len(obs.values) < 3:
        raise ValueError("importance needs at least 3 COMPLETE trials")
    if not obs.values.max() > obs.values.min():
        raise ValueError(
            "importance needs trials with different values; every finished trial has "
            f"{float(obs.values[0]) * (1.0 if mode == 'min' else -1.0)!r}, so no parameter "
            "can be told to matter"
        )
    sampler = GPSampler(device="cpu")
    try:
        with torch_threads(1):
            surrogate, _ = sampler.fit(space, obs)
    except SurrogateError as e:
        raise ValueError(f"importance: the GP could not be fitted to these trials ({e})") from e
    shares = lengthscale_shares(space, surrogate)
    # a parameter the trials never varied (a single choice, say) cannot be told to matter
    varied = {n: len({params_key({n: p[n]}) for p in obs.params}) > 1 for n in shares}
    total = sum(v for n, v in shares.items() if varied[n])
    return {n: (v / total if varied[n] and total > 0 else 0.0) for n, v in shares.items()}


__all__ = ["GPSampler", "importance", "observations"]

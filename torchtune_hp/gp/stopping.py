"""``pruner.name: gp``: the learning-curve GP decides which running trials go on.

ASHA and the median rule stop a trial by its rank at a rung, blind to where its curve is
heading, so a slow starter (small learning rate, heavy regularization, SGD against Adam) is
stopped exactly when it is about to become good. This pruner asks a model instead: at each
decision rung (``min_resource * eta**k`` reports) the :class:`~torchtune_hp.gp.curves.CurveModel`
forecasts the trial's final value from its own partial curve and every other trial's curve,
and the trial stops when it is hopeless or when its remaining epochs are worth more spent on a
new configuration (see :class:`GPPruner`). The model needs COMPLETE trials to know how long
training is and how curves finish, so the study starts as ASHA: before the first completes,
a trial outside ASHA's top ``1/eta`` at the rung stops; until ``n_startup`` have completed, it
stops unless the model would keep it and forecasts it among the best ``keep_top`` there.
Trying many configurations briefly at the start, as ASHA does, beat training the first few
whole (``benchmarks/run_curves.py``); the model's say over its leaders keeps ASHA from
starving it of complete curves when the best configurations start slowly.

With the ``gp`` sampler the same model feeds the search: a stopped trial enters the sampler's
data at its *forecast* final value rather than at its last report (a trial stopped at epoch 2
of 20 is not as bad as its epoch-2 loss), so the next configuration is chosen on what each
configuration would have reached.

With ``resume: true`` a stopped trial is *paused*, not ended for good (freeze-thaw, Swersky et
al. 2014): whenever the study is about to start a new trial, it asks :meth:`GPPruner.resume_choice`
first, and the paused trial whose remaining epochs promise the most expected improvement per
epoch goes on from its last report instead, when that beats a new configuration's full training
(``resume_ratio``). The objective must then go on from where it stopped (see
:class:`~torchtune_hp.trial.Pausable`; Lightning: ``ckpt_path=trial.ckpt_path``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from torchtune_hp.display import counted
from torchtune_hp.gp.curves import SCALES, CurveModel, FinalPrediction, check_kernel
from torchtune_hp.gp.surrogate import SurrogateError
from torchtune_hp.gp.threads import torch_threads
from torchtune_hp.options import check_choice
from torchtune_hp.pruners import asha_rank, at_end, at_rung, check_least, diverged
from torchtune_hp.space import Space
from torchtune_hp.trial import RESUMED, FrozenTrial, TrialState

# How a running trial's promise is priced against a new trial's (see GPPruner._new_gain).
NEW_TRIAL = ("best", "as_started")


def _reports(n: int) -> str:
    return counted(n, "report")


@dataclass(frozen=True)
class Decision:
    """Why a trial was stopped or let go on at one rung (what TensorBoard and ``trials`` show):
    its forecast, and the expected gain per epoch of going on against that of a new trial;
    or, before the model forecasts, its rank among the trials that reached the rung."""

    forecast: FinalPrediction | None  # None: by rank alone, before any trial completed
    stop: bool
    rate: float = math.nan  # expected improvement per remaining epoch of this trial
    new_rate: float = math.nan  # ... and per epoch of the best new configuration
    rank: tuple[int, int, int] | None = None  # (reports, trials better there, trials there)
    resumed: bool = False  # a paused trial chosen to go on, in place of a new one

    def describe(self, metric: str = "value") -> str:
        verb = "resumed" if self.resumed else "stopped" if self.stop else "continued"
        f = self.forecast
        rank = ""
        if self.rank is not None:
            r, better, n = self.rank
            rank = f"{better} of the {n} trials that reached {_reports(r)} were better"
            if f is None:
                return f"{verb} after {_reports(r)} by rank, before the model forecasts: {rank}"
        assert f is not None
        lead = RESUMED if self.resumed else f"{verb} after"  # trials' notes are found by it
        text = (
            f"{lead} {_reports(f.resource)}: predicted final {metric} {f.mean:.4g} "
            f"± {f.sd:.2g}, P(beats best {f.incumbent:.4g}) = {f.p_improve:.2f}"
        )
        if math.isfinite(self.rate) and math.isfinite(self.new_rate):
            text += f"; expected gain per epoch {self.rate:.2g} (a new trial: {self.new_rate:.2g})"
        return text + (f"; by rank, {rank}" if rank else "")


@dataclass
class GPPruner:
    """At each decision rung, a trial stops when either

    * its chance of ending better than the best value reported so far is below
      ``threshold`` (it is hopeless), or
    * the expected improvement of its final value, per epoch it still needs, is below
      ``gain_ratio`` times that of a full training of the most promising new configuration
      (its epochs buy more as a new trial: the freeze-thaw trade, Swersky et al. 2014),
      unless its forecast is among the best ``keep_top`` of all trials that reached this rung.

    Until ``n_startup`` trials are COMPLETE, ASHA's rule comes first, at its own rungs
    (``startup_min_resource * eta**k`` reports: 1, 2, 4, ...): a trial in the top ``1/eta``
    of the trials at the rung goes on; one outside it stops, unless the model (once a trial
    has completed) would keep it and forecasts it among the best ``keep_top`` at the rung.

    Options: ``threshold`` (0.05), ``gain_ratio`` (0.5; 0 = the first rule alone), ``keep_top``
    (0.25), ``n_startup`` (COMPLETE trials before the model decides alone, 3), ``min_resource``
    and ``eta`` (decisions at ``min_resource * eta**k`` reports: 2, 4, 8, ...; the first after
    two reports, since one report, often still the loss of an untrained network, is where slow
    starters and bad configurations look most alike: on the learning-curve benchmark over twenty
    seeds, with 2 the median beat every peer's on 7 of 8 task and budget pairs, with 1 on 4),
    ``startup_min_resource`` (where ASHA's startup rank first decides: 1, or ``min_resource``
    when that is set; before any curve has ended a rank is all there is, and trying many
    configurations for one epoch each finds a good one sooner: see the README's Benchmarks),
    ``max_resource`` (reports in a full training; by default the most a COMPLETE trial made),
    ``device`` (cpu | cuda | auto), ``resume`` (False; True: a stopped trial is paused and may
    go on later, see :meth:`resume_choice`), ``resume_ratio`` (1.0: resume when the paused
    trial's expected gain per remaining epoch is at least this times a new trial's; above
    ``gain_ratio``, so a trial is not stopped and resumed back and forth), ``kernel`` (the curve
    model's covariance, see :data:`~torchtune_hp.gp.curves.KERNELS`: ``matern_decay``, the
    default, ``matern`` or ``freeze_thaw``), ``new_trial`` (what the second rule prices a new
    trial at: ``best``, the default, the most promising of 512 quasi-random configurations;
    ``as_started``, what the running trial's own configuration promised before its reports,
    which the sampler chose and so resembles its next choice, where the best of 512 is biased
    upwards; resuming always uses ``best``), ``scale`` (``linear``, the default: the model
    works on the values as they are; ``boxcox``: on a Box-Cox transform of them, its exponent
    fitted, where every reported value is positive and lower is better, a loss: better
    forecasts that stay above zero, no better runs; see :mod:`~torchtune_hp.gp.curves`)."""

    threshold: float = 0.05
    gain_ratio: float = 0.5
    keep_top: float = 0.25
    n_startup: int = 3
    min_resource: int | None = None  # 2; None so that startup_min_resource can follow a set one
    eta: int = 2
    max_resource: int | None = None
    device: str = "cpu"
    resume: bool = False
    resume_ratio: float = 1.0
    kernel: str = "matern_decay"
    new_trial: str = "best"
    startup_min_resource: int | None = None  # the fields before keep their positions
    scale: str = "linear"

    name = "gp"

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep_top <= 1.0:
            raise ValueError(f"keep_top must be in [0, 1], got {self.keep_top!r}")
        if not self.gain_ratio >= 0.0:
            raise ValueError(f"gain_ratio must be >= 0, got {self.gain_ratio!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold!r}")
        if self.startup_min_resource is None:  # 1, or the min_resource a user chose
            self.startup_min_resource = 1 if self.min_resource is None else self.min_resource
        if self.min_resource is None:
            self.min_resource = 2
        check_least(
            ("n_startup", self.n_startup, 1),
            ("min_resource", self.min_resource, 1),
            ("startup_min_resource", self.startup_min_resource, 1),
            ("eta", self.eta, 2),
        )
        if not self.resume_ratio > 0.0:
            raise ValueError(f"resume_ratio must be > 0, got {self.resume_ratio!r}")
        check_kernel(self.kernel)
        check_choice("scale", self.scale, SCALES)
        check_choice("new_trial", self.new_trial, NEW_TRIAL)
        if self.max_resource is not None:
            check_least(("max_resource", self.max_resource, 1))
            first = min(self.min_resource, self.startup_min_resource)
            if self.max_resource <= first:  # no decision before the end: no stop at all
                raise ValueError(
                    f"max_resource must be > {first}, the reports at the first decision "
                    f"(min_resource {self.min_resource}, startup_min_resource "
                    f"{self.startup_min_resource}); got {self.max_resource!r}"
                )
        from torchtune_hp.samplers.gp import resolve_device

        self._device = resolve_device(self.device)
        self.model: CurveModel | None = None
        self._warned = False
        self.last_decision: Decision | None = None  # of the last prune() call, if it decided

    def bind(self, space: Space, mode: str, seed: int = 0) -> None:
        """Called by the study: the model needs the space's encoding and the direction."""
        self.model = CurveModel(
            space,
            mode,
            self._device,
            self.max_resource,
            seed=seed,
            kernel=self.kernel,
            scale=self.scale,
        )

    def prune(self, trial: FrozenTrial, others: Sequence[FrozenTrial], mode: str) -> bool:
        self.last_decision = None
        if diverged(trial):
            return True
        if self.model is None:
            raise RuntimeError("GPPruner.bind(space, mode) must be called before prune()")
        if at_end(trial, self.max_resource):
            return False
        resource = len(trial.intermediate)
        complete = sum(t.state is TrialState.COMPLETE for t in others)
        startup = complete < self.n_startup  # the model has seen few curves end
        first = self.startup_min_resource if startup else self.min_resource
        assert first is not None
        if not at_rung(first, self.eta, resource):
            return False
        ranked = None
        if startup:  # ASHA's rank first
            outside, better, n = asha_rank(trial, others, resource, mode, self.eta)
            ranked = Decision(None, outside, rank=(resource, better, n))
            if complete == 0 or not ranked.stop:
                self.last_decision = ranked
                return ranked.stop
        try:
            with torch_threads(1):
                # Against ASHA's stop, the model keeps only its leaders.
                decision = self._decide(trial, others, resource, must_lead=ranked is not None)
                if decision is not None and ranked is not None:
                    decision = replace(decision, rank=ranked.rank)
        except (SurrogateError, RuntimeError, ValueError) as e:  # the trial goes on
            self._failed(e)
            return False
        self.last_decision = decision
        return decision is not None and decision.stop

    def _decide(
        self,
        trial: FrozenTrial,
        others: Sequence[FrozenTrial],
        resource: int,
        must_lead: bool = False,
    ) -> Decision | None:
        """The model's decision; with ``must_lead``, a trial it would keep also stops unless
        its forecast is among the leaders (:meth:`_leads`, computed at most once)."""
        assert self.model is not None
        if not self.model.update([*others, trial]):
            return None
        horizon = self.model.horizon
        if horizon is None or resource >= horizon:
            return None  # at (or past) the end of training: nothing left to save
        f = self.model.forecast([trial])[0]
        rate = f.gain / (horizon - resource)
        new_rate = self._new_gain(trial) / horizon if self.gain_ratio > 0 else math.nan
        leads: bool | None = None

        def lead() -> bool:
            nonlocal leads
            if leads is None:
                leads = self._leads(f, others, resource)
            return leads

        stop = f.p_improve < self.threshold or (rate < self.gain_ratio * new_rate and not lead())
        return Decision(f, stop or (must_lead and not lead()), rate, new_rate)

    def _new_gain(self, trial: FrozenTrial) -> float:
        """What a new trial's full training is worth (expected improvement, warped units):
        ``best``, the most promising of 512 quasi-random configurations; ``as_started``, the
        running trial's own configuration as the model forecasts it without its reports."""
        assert self.model is not None
        if self.new_trial == "as_started":
            return self.model.prior_gain(trial)
        return self.model.new_trial_gain()

    def resume_choice(
        self, trials: Collection[FrozenTrial], skip: Collection[int] = ()
    ) -> Decision | None:
        """With ``resume``, the paused trial to run again in place of a new one, or None;
        never one of ``skip`` (trial numbers), which the model still learns from.

        A paused trial is a PRUNED one whose reports are all finite and fewer than a full
        training's. Once ``n_startup`` trials are COMPLETE (before, the model has seen too few
        curves end to be trusted over a new configuration), the one with the highest expected
        improvement per remaining epoch goes on when that rate is at least ``resume_ratio``
        times a new configuration's full training and it is not hopeless (``threshold``)."""
        if not self.resume or self.model is None:
            return None
        trials = list(trials)
        if sum(t.state is TrialState.COMPLETE for t in trials) < self.n_startup:
            return None
        paused = [
            t
            for t in trials
            if t.state is TrialState.PRUNED
            and t.number not in skip
            and t.intermediate
            and all(math.isfinite(v) for v in t.intermediate.values())
        ]
        if not paused:
            return None
        try:
            with torch_threads(1):
                if not self.model.update(trials):
                    return None
                horizon = self.model.horizon
                assert horizon is not None
                paused = [t for t in paused if len(t.intermediate) < horizon]
                forecasts = self.model.forecast(paused)
                new_rate = self.model.new_trial_gain() / horizon
        except (SurrogateError, RuntimeError, ValueError) as e:
            self._failed(e)
            return None
        best: Decision | None = None
        for f in forecasts:
            rate = f.gain / (horizon - f.resource)
            if f.p_improve >= self.threshold and (best is None or rate > best.rate):
                best = Decision(f, stop=False, rate=rate, new_rate=new_rate, resumed=True)
        if best is None or not best.rate > 0.0 or best.rate < self.resume_ratio * new_rate:
            return None
        return best

    def _failed(self, error: Exception) -> None:
        """A numerical failure leaves the trial running; said once per study, not silently."""
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"pruner gp could not forecast ({type(error).__name__}: {error}); the trials "
                "it could not judge go on",
                RuntimeWarning,
                stacklevel=3,
            )

    def _leads(self, mine: FinalPrediction, others: Sequence[FrozenTrial], resource: int) -> bool:
        """Whether the trial's forecast final value is among the best ``keep_top`` of the
        forecasts of every trial that reached this many reports: those go on whatever a new
        trial promises, so full trainings keep coming (the model learns how curves end from
        them) even while the model is unsure of everything."""
        if self.keep_top <= 0:
            return False
        better, n = self._rank(mine, others, resource)
        return better < max(1, math.ceil(self.keep_top * n))

    def _rank(
        self, mine: FinalPrediction, others: Sequence[FrozenTrial], resource: int
    ) -> tuple[int, int]:
        """How many of the trials that reached ``resource`` reports have a better forecast
        final value than ``mine``, and how many trials that is counting this one."""
        assert self.model is not None
        rivals = [
            t
            for t in others
            if t.number != mine.number
            and t.state is not TrialState.FAILED
            and len(t.intermediate) >= resource
        ]
        if not rivals:
            return 0, 1
        better = sum(
            f.mean * self.model.sign < mine.mean * self.model.sign
            for f in self.model.forecast(rivals)
        )
        return better, len(rivals) + 1

    def _as_left(self, which: Sequence[FrozenTrial]) -> list[FinalPrediction]:
        """Forecasts from the model as the last decision left it (never refit here: what the
        sampler and TensorBoard ask must not change later decisions); empty before one."""
        if self.model is None or self.model.surrogate is None or not which:
            return []
        try:
            with torch_threads(1):
                return self.model.forecast(which)
        except (SurrogateError, RuntimeError, ValueError) as e:
            self._failed(e)
            return []

    def final_values(self, trials: Sequence[FrozenTrial]) -> dict[int, float]:
        """Forecast final values of the PRUNED trials among ``trials`` (study units): what
        the gp sampler learns from in place of their last reports. Every one was stopped by
        a decision, so the model holds its curve. A trial whose run diverged (a report that
        is not finite) is left out: the sampler learns it as the worst value, as before."""
        pruned = [
            t
            for t in trials
            if t.state is TrialState.PRUNED
            and t.intermediate
            and all(math.isfinite(v) for v in t.intermediate.values())
        ]
        return {f.number: f.mean for f in self._as_left(pruned)}

    def explain_curves(
        self, trials: Sequence[FrozenTrial], most: int = 40
    ) -> dict[int, tuple[list[float], list[float], list[float]]]:
        """For the curves view: the predicted rest of the curve (steps, mean, sd) of the
        ``most`` latest stopped trials, from their last report to the horizon, from the model
        as the last decision left it. Resources become steps by the trial's own spacing."""
        which = [t for t in trials if t.state is TrialState.PRUNED and len(t.intermediate) >= 1][
            -most:
        ]
        if not self._as_left(which[:1]):
            return {}
        assert self.model is not None
        out = {}
        for t in which:
            steps = sorted(t.intermediate)
            spacing = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 1.0
            rs, mean, sd = self.model.continuation(t)
            xs = [steps[-1] + (r - len(steps)) * spacing for r in rs]
            out[t.number] = (xs, mean, sd)
        return out

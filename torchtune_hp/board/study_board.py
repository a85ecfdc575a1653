"""TensorBoard as the study's dashboard (the layout is in :mod:`torchtune_hp.board.tags`).

A trial's HParams session is written twice: when it starts, into ``trial_NNNN/running/`` (state
RUNNING, its reports as they arrive), and when it ends, into ``trial_NNNN/hparams/``, rebuilt
whole from the trial's row (parameters, study and state columns, its reports and value under
``objective/<metric>``, none for a FAILED trial, whose error goes in as text and whose
reports go beside it into ``trial_NNNN/failed_curve/``), after which the running session is
removed and TensorBoard drops it. The study-level run ``study/`` holds each
trial's objective and the best so far; its sub-runs ``study/views/`` and ``study/gp/`` the latest
study views and GP pictures, each redraw replacing the file before it.

Everything but the GP pictures is drawn from the study's rows, so :meth:`StudyBoard.sync`
rebuilds what is missing (a driver killed mid-trial, a study written by 0.1) when a study
starts. The board never reads the model, only the sampler's :class:`Explanation` arrays.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchtune_hp import files, signals
from torchtune_hp.board.events import EventWriter, write_replacing
from torchtune_hp.board.foreign import strip_foreign_hparams
from torchtune_hp.board.hparams import session_end_summary, session_start_summary, text_summary
from torchtune_hp.board.tags import (
    ERROR_TAG,
    FAILED_CURVE_RUN,
    FORECAST_RUN,
    GP_RUN,
    OUR_SUFFIX,
    RUNNING_RUN,
    SESSION_RUN,
    STUDY_RUN,
    VIEWS_RUN,
    objective_tag,
    trial_run_name,
)
from torchtune_hp.samplers.explain import Explanation
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial, TrialState

# a study's periodic pictures take at most 1/DRAW_BUDGET of its time, half of that for the
# views and half for the GP's pictures: a redraw of either waits 2 * DRAW_BUDGET times as
# long as its last drawing took (the GP's timed from the model's evaluation for it)
DRAW_BUDGET = 10
FIRST_DRAW_GUESS_S = 1.0  # what the first drawing is guessed to take (matplotlib's import too)
# in the study run's folder: how many finished trials the last full drawing (a run's end) showed
DRAWN_MARK = ".drawn"


def _end_order(t: FrozenTrial) -> tuple[bool, float, int]:
    """Trials in the order they ended (one without an end time last, by number)."""
    return (t.end is None, t.end.timestamp() if t.end is not None else 0.0, t.number)


def _finite_steps(trial: FrozenTrial) -> list[int]:
    """The steps of the trial's finite reports, in order (a diverged one would flatten a
    curve)."""
    return sorted(s for s, v in trial.intermediate.items() if math.isfinite(v))


def _ours(run: Path) -> list[Path]:
    """The event files the board wrote in the run folder."""
    return sorted(run.glob(f"events.out.tfevents.*{OUR_SUFFIX}"))


def _written(run: Path) -> bool:
    """Whether the run folder holds an event file the board wrote (an empty folder, its files
    deleted by hand, does not)."""
    return bool(_ours(run))


def _error_markdown(trial: FrozenTrial) -> str:
    """The error as a Markdown code block (indented four spaces: no fence to escape)."""
    text = (trial.error or "no error recorded").rstrip()
    return f"trial {trial.number} failed:\n\n" + "\n".join(
        "    " + line for line in text.splitlines()
    )


def _forecasts(study: Any) -> Any:
    """The pruner's forecasts of the stopped trials' curves (pruner gp), as plain arrays for
    the curves view; None for a pruner without a model."""
    explain = getattr(study.pruner, "explain_curves", None)
    return explain(study.trials) if explain is not None else None


def _never_stops_a_study(method: Callable[..., None]) -> Callable[..., None]:
    """The board shows the study; it must never stop it or lose a trial. An error here (a
    trial that replaced its folder with a file, a folder made read-only) becomes a warning,
    once per method and kind of error; what is missing is written when the study next runs."""

    @functools.wraps(method)
    def guarded(self: StudyBoard, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as e:
            key = (method.__name__, type(e).__name__)
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"TensorBoard output of study {self.name!r} skipped in {method.__name__}: "
                    f"{type(e).__name__}: {e}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    return guarded


class StudyBoard:
    def __init__(
        self, study_dir: Path, name: str, space: Space, metric: str, mode: str, images_every: int
    ) -> None:
        self.dir = study_dir
        self.name = name
        self.space = space
        self.metric = metric
        self.mode = mode
        self.images_every = images_every
        self._study_writer: EventWriter | None = None
        self._running: dict[int, EventWriter] = {}
        self._forecast: dict[int, EventWriter] = {}  # pruner gp: trial -> its forecast run
        self._drawn_at = -1  # how many trials had finished when the views were last drawn
        # periodic pictures wait until this (monotonic) time: the first until the study has
        # run ten times as long as a drawing is guessed to take, each next one likewise
        began = time.monotonic()
        self._next_views = self._next_gp = began + DRAW_BUDGET * FIRST_DRAW_GUESS_S
        self._explaining_since: float | None = None  # when the study was told to explain
        self._ended_here = 0  # trials that ran and ended while this board listened
        self._kept: list[Path] = []  # the study run's files when the study opened
        self._warned: set[tuple[str, str]] = set()

    @property
    def study_writer(self) -> EventWriter:
        if self._study_writer is None:
            self._study_writer = EventWriter(self.dir / STUDY_RUN)
        return self._study_writer

    def _trial_dir(self, number: int) -> Path:
        return self.dir / trial_run_name(number)

    # -- sessions ----------------------------------------------------------------------------
    def write_session(self, trial: FrozenTrial) -> None:
        """The finished trial's session, from its row alone (a FAILED one's reports beside
        it, see :meth:`_write_failed_curve`); then its running session goes.
        HParams summaries a script wrote into the trial's folder are removed first (see
        :mod:`torchtune_hp.board.foreign`). A trial added with ``add()`` gets a folder here."""
        folder = self._trial_dir(trial.number)
        if not os.path.lexists(folder):
            folder.mkdir()
        elif folder.is_symlink() or not folder.is_dir():  # the trial replaced it: not ours now
            raise files.unsafe(folder) if folder.is_symlink() else NotADirectoryError(folder)
        strip_foreign_hparams(folder)
        writer = EventWriter(files.renewed_dir(folder / SESSION_RUN, OUR_SUFFIX))
        try:
            writer.summary(session_start_summary(self.space, trial.params, self.name, trial.state))
            if trial.state is not TrialState.FAILED:
                self._write_objective(writer, trial)
            else:
                writer.summary(text_summary(ERROR_TAG, _error_markdown(trial)))
            writer.summary(session_end_summary(trial.state))
        finally:
            writer.close()
        self._write_failed_curve(folder, trial)
        files.discard_dir(folder / RUNNING_RUN, OUR_SUFFIX)

    def _write_failed_curve(self, folder: Path, trial: FrozenTrial) -> None:
        """A FAILED trial's reports, in ``failed_curve`` beside its session: its session has
        no objective (the HParams table would show its last report as its result), and its
        running session, which showed the curve, goes. A crash at epoch 7 keeps its curve."""
        run = folder / FAILED_CURVE_RUN
        if trial.state is not TrialState.FAILED or not _finite_steps(trial):
            if os.path.lexists(run):
                files.discard_dir(run, OUR_SUFFIX)
            return
        writer = EventWriter(files.renewed_dir(run, OUR_SUFFIX))
        try:
            self._write_reports(writer, trial)
        finally:
            writer.close()

    @_never_stops_a_study
    def relabel(self, trials: Sequence[FrozenTrial]) -> None:
        """Write the finished trials' sessions again under this board's name: a study folder
        moved aside (``run --fresh``) keeps its rows, and TensorBoard's ``study`` column then
        tells them from the new study's, which takes the old name."""
        for t in trials:  # only rows that were written (not with TensorBoard turned off)
            if t.state.finished and _written(self._trial_dir(t.number) / SESSION_RUN):
                self.repair_session(t)  # one trial's broken folder stops no other

    def _write_reports(self, writer: EventWriter, trial: FrozenTrial) -> list[int]:
        """The trial's finite reports under ``objective/<metric>``; returns their steps."""
        steps = _finite_steps(trial)
        for step in steps:
            writer.scalar(objective_tag(self.metric), trial.intermediate[step], step)
        return steps

    def _write_objective(self, writer: EventWriter, trial: FrozenTrial) -> None:
        steps = self._write_reports(writer, trial)
        last = trial.intermediate[steps[-1]] if steps else None
        if trial.value is not None and trial.value != last:
            # the value differs from the last finite report (or nothing was reported): it goes
            # last, so it is what the HParams table shows; inf too (a run that diverged, whose
            # earlier finite report would rank it among the good ones)
            writer.scalar(objective_tag(self.metric), trial.value, steps[-1] + 1 if steps else 0)

    def sync(self, trials: Sequence[FrozenTrial]) -> None:
        """Write what is missing: the sessions of finished trials that lack one (the driver
        died before it wrote them, 0.1 wrote the study, or their event files were deleted) or
        still have a running one, and the study run's points when its event files are gone.
        0.1's own experiment summary, in the study folder itself, is removed."""
        self.strip_study_folder()
        for trial in trials:
            if trial.state.finished:
                folder = self._trial_dir(trial.number)
                if not _written(folder / SESSION_RUN) or os.path.lexists(folder / RUNNING_RUN):
                    self.repair_session(trial)
        if not _written(self.dir / STUDY_RUN):
            self.repair_study_run(trials)
        self._kept = _ours(self.dir / STUDY_RUN)  # watched: deleted, they are written again

    @_never_stops_a_study
    def repair_study_run(self, trials: Sequence[FrozenTrial]) -> None:
        self._write_study_points(trials)

    def _write_study_points(self, trials: Sequence[FrozenTrial]) -> None:
        """Each finished trial's points in the study run, in the order the trials ended, as
        they were written live: its value when it COMPLETEd, and the best so far then."""
        sign = 1.0 if self.mode == "min" else -1.0
        best: float | None = None
        latest = -1
        ended = (t for t in trials if t.state.finished)
        for t in sorted(ended, key=_end_order):
            if t.state is TrialState.COMPLETE and t.value is not None:
                if best is None or sign * t.value < sign * best:
                    best = t.value
            latest = max(latest, t.number)
            self._study_points(t, best, latest)

    def _study_points(self, trial: FrozenTrial, best: float | None, latest: int) -> None:
        """The trial's value at its number, and the best so far at ``latest``, the highest
        number among the trials ended by then: with parallel trials (or a paused one that
        runs again) a trial can end after higher-numbered ones, and its best, written back at
        its own number, would draw the curve back over their points, rising where the best
        never did."""
        if trial.value is not None and trial.state is TrialState.COMPLETE:
            self.study_writer.scalar(f"study/{self.metric}", trial.value, trial.number)
        if best is not None:
            self.study_writer.scalar(f"study/best_{self.metric}", best, latest)

    def _study_file_lost(self) -> bool:
        """Whether an event file of the study run was deleted while the study ran (a cleanup,
        a hand): then a new one is started, and every point is written to it again."""
        writer = self._study_writer
        watched = [*self._kept, *([writer.path] if writer is not None else [])]
        if all(os.path.exists(p) for p in watched):
            return False
        if writer is not None:
            writer.close()
        self._study_writer, self._kept = None, []
        return True

    @_never_stops_a_study
    def strip_study_folder(self) -> None:
        strip_foreign_hparams(self.dir, recurse=False)

    @_never_stops_a_study
    def repair_session(self, trial: FrozenTrial) -> None:
        self.write_session(trial)

    # -- what the study tells its subscribers (StudyListener) ---------------------------------
    @_never_stops_a_study
    def trial_started(self, study: Any, trial: Any) -> None:
        folder = self._trial_dir(trial.number)
        resumed = getattr(trial, "resume_from", None) is not None
        if resumed:  # a paused trial runs again: one session, RUNNING, until it ends again
            files.discard_dir(folder / SESSION_RUN, OUR_SUFFIX)
        writer = EventWriter(files.renewed_dir(folder / RUNNING_RUN, OUR_SUFFIX))
        writer.summary(
            session_start_summary(self.space, trial.params, self.name, TrialState.RUNNING)
        )
        writer.summary(session_end_summary(TrialState.RUNNING))  # the status filter's "Running"
        self._running[trial.number] = writer
        if resumed:  # its curve so far, so the running session shows it whole
            for step, value in sorted(study.trial(trial.number).intermediate.items()):
                self.trial_reported(study, trial.number, step, value)

    @_never_stops_a_study
    def trial_reported(self, study: Any, number: int, step: int, value: float) -> None:
        writer = self._running.get(number)
        if writer is not None and math.isfinite(value):  # a diverged report would flatten it
            writer.scalar(objective_tag(self.metric), value, step)

    @_never_stops_a_study
    def trial_decided(self, study: Any, number: int, decision: Any) -> None:
        """``pruner: gp`` decided on a trial: its forecast (predicted final value, ±1 sd, the
        chance to beat the best) at the trial's latest step, in ``trial_NNNN/pruner_forecast``; the
        reason in words as text when it stopped the trial (a stop by rank, before the model
        forecasts, has the text alone) or resumed it (with its earlier resumes, numbered).
        Each at the step of the trial's latest report, as TensorBoard shows one point per tag
        and step: a resume, which comes at the step its stop did, has its own text tag
        (``forecast/resumed``) and no forecast points (its forecast is in its text), so the
        stop's stay in view."""
        f = decision.forecast
        if f is None and not decision.stop:
            return
        writer = self._forecast.get(number)
        if writer is None:
            folder = self._trial_dir(number) / FORECAST_RUN
            if not (decision.resumed and folder.is_dir() and not folder.is_symlink()):
                folder = files.renewed_dir(folder, OUR_SUFFIX)  # a resumed trial's is kept
            writer = self._forecast[number] = EventWriter(folder)
        me = study.trial(number)
        steps = me.intermediate
        step = max(steps) if steps else (f.resource if f is not None else 0)
        if decision.resumed:  # every resume so far: a later one at this step would hide it
            said = me.resumes or [decision.describe(self.metric)]
            text = (
                said[0]
                if len(said) == 1
                else "\n\n".join(f"resume {i}: {line}" for i, line in enumerate(said, 1))
            )
            writer.summary(text_summary("forecast/resumed", text), step)
            return
        if f is not None:
            tag = f"forecast/final_{self.metric}"
            writer.scalar(tag, f.mean, step)
            writer.scalar(f"{tag}_low", f.mean - f.sd, step)
            writer.scalar(f"{tag}_high", f.mean + f.sd, step)
            writer.scalar("forecast/p_beats_best", f.p_improve, step)
        if decision.stop:
            writer.summary(text_summary("forecast/decision", decision.describe(self.metric)), step)

    @_never_stops_a_study
    def trial_finished(self, study: Any, trial: FrozenTrial) -> None:
        forecast = self._forecast.pop(trial.number, None)
        if forecast is not None:
            forecast.close()
        writer = self._running.pop(trial.number, None)
        if writer is not None:  # it ran here (not a warm start added, not a recovered one)
            writer.close()
            self._ended_here += 1
        self.write_session(trial)
        finished = study.finished_trials
        if self._study_file_lost():
            self._write_study_points(finished)
        else:
            best = study.incumbent
            latest = max(t.number for t in finished)
            self._study_points(trial, None if best is None else best.value, latest)
        if self.images_every and len(finished) % self.images_every == 0:
            if time.monotonic() >= self._next_views:
                self.draw_views(finished, lambda: _forecasts(study))

    def wants_explanation(self, number: int) -> bool:
        """Whether the study should ask the sampler for its pictures now (they cost a model
        evaluation and a drawing: the same time budget as the views)."""
        now = time.monotonic()
        if not (self.images_every and now >= self._next_gp):
            return False
        self._explaining_since = now
        return True

    @_never_stops_a_study
    def sampler_explained(self, study: Any, expl: Explanation, number: int) -> None:
        self._draw_gp(expl, number)

    @_never_stops_a_study
    def study_closed(self, study: Any) -> None:
        try:
            # once more at the end, if trials ended in this run or the last full drawing is
            # behind the study (a driver killed while it drew, after its last trial: a rerun
            # runs nothing); not on a plain open/close of a drawn study, nor after a stop,
            # when the user waits for the prompt
            quiet = study.stopped or signals.received() is not None
            finished = study.finished_trials
            behind = self._drawn_for() != len(finished)
            if self.images_every and finished and (self._ended_here or behind) and not quiet:
                self.draw_views(finished, lambda: _forecasts(study))
                explain_now = getattr(study.sampler, "explain_trials", None)
                if explain_now is not None:
                    self._explaining_since = time.monotonic()  # not a stale ask's time
                    expl = explain_now(self.space, finished)
                    if expl is not None:
                        self._draw_gp(expl, len(finished))
                self.close()  # everything on disk before the mark that says it is
                files.write_text(self.dir / STUDY_RUN / DRAWN_MARK, str(len(finished)))
        finally:
            self.close()

    def _drawn_for(self) -> int | None:
        """How many finished trials the last full drawing (the end of a run) showed."""
        try:
            return int((self.dir / STUDY_RUN / DRAWN_MARK).read_text())
        except (OSError, ValueError):
            return None

    # -- pictures ----------------------------------------------------------------------------
    def draw_views(
        self, finished: Sequence[FrozenTrial], forecasts: Callable[[], Any] | None = None
    ) -> None:
        """The study views (history, curves, slices, pairs, parallel coordinates), at step =
        the number of finished trials. Drawing takes about a second (more on a long study), so
        after one the next periodic redraw waits twenty times as long: with fast trials the
        views and the GP's pictures together cost a tenth of the time at most; the last is
        always drawn at the end."""
        if not finished or len(finished) == self._drawn_at:
            return
        from torchtune_hp.board.figures import drawing
        from torchtune_hp.board.views import study_views  # matplotlib on use

        began = time.monotonic()
        self._drawn_at = len(finished)
        curves = forecasts() if forecasts is not None else None  # timed with the drawing
        with drawing():
            views = study_views(finished, self.space, self.metric, self.mode, curves)
        images = {f"views/{tag}": png for tag, png in views.items()}
        write_replacing(self.dir / VIEWS_RUN, images, len(finished))
        now = time.monotonic()
        self._next_views = now + 2 * DRAW_BUDGET * (now - began)

    def _draw_gp(self, expl: Explanation, step: int) -> None:
        from torchtune_hp.board.figures import drawing, importance_png, slices_png

        began = self._explaining_since or time.monotonic()  # the model's evaluation counts
        self._explaining_since = None
        with drawing():  # matplotlib on use
            slices, importance = (
                slices_png(expl, self.metric, step),
                importance_png(expl.importance, step),
            )
        write_replacing(self.dir / GP_RUN, {"gp/slices": slices, "gp/importance": importance}, step)
        now = time.monotonic()
        self._next_gp = now + 2 * DRAW_BUDGET * (now - began)

    def close(self) -> None:
        """Trials still open (an interrupted run) end as the study records them: the study
        tells :meth:`trial_finished` first; a session left here is closed as it is."""
        for writer in [*self._running.values(), *self._forecast.values()]:
            writer.close()
        self._running.clear()
        self._forecast.clear()
        if self._study_writer is not None:
            self._study_writer.close()
            self._study_writer = None

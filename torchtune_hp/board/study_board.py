"""TensorBoard as the study's dashboard: one run per trial and one for the study.

``logs/<study>/trial_0007/`` holds that trial's HParams session (its parameters at the start,
the objective under ``trial/<metric>`` as values arrive, its end status and ``trial/pruned`` at
the end) beside the curves its own Lightning logger writes (``trial.logger()``). ``logs/<study>/``
holds the HParams experiment (written when the study is created), each trial's objective and
the best so far (step = trial number), and every ``images_every`` trials the GP pictures.

The board is fed by the study after each storage write, so everything it shows is also in the
database; it never reads the model, only the sampler's :class:`Explanation` arrays.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torchtune_hp.board.events import EventWriter
from torchtune_hp.board.hparams import (
    PRUNED_TAG,
    experiment_summary,
    objective_tag,
    session_end_summary,
    session_start_summary,
)
from torchtune_hp.samplers.explain import Explanation
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial, TrialState


def trial_run_name(number: int) -> str:
    return f"trial_{number:04d}"


class _TrialRun:
    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        self.last: tuple[int, float] | None = None  # the last (step, value) reported


class StudyBoard:
    def __init__(self, study_dir: Path, space: Space, metric: str, mode: str) -> None:
        self.dir = study_dir
        self.space = space
        self.metric = metric
        self.mode = mode
        self._study_writer: EventWriter | None = None
        self._runs: dict[int, _TrialRun] = {}

    @property
    def study_writer(self) -> EventWriter:
        if self._study_writer is None:
            self._study_writer = EventWriter(self.dir)
        return self._study_writer

    def write_experiment(self, description: str = "") -> None:
        """The HParams columns; once per study (TensorBoard reads one experiment per logdir)."""
        summary = experiment_summary(self.space, self.metric, self.mode, description)
        self.study_writer.summary(summary)

    # -- what the study tells its subscribers (StudyListener) ---------------------------------
    def trial_started(self, study: Any, trial: Any) -> None:
        number = trial.number
        run = _TrialRun(EventWriter(self.dir / trial_run_name(number)))
        run.writer.summary(session_start_summary(self.space, trial.params, trial_run_name(number)))
        run.writer.scalar(PRUNED_TAG, 0.0, 0)
        self._runs[number] = run

    def trial_reported(self, study: Any, number: int, step: int, value: float) -> None:
        run = self._runs.get(number)
        if run is not None and math.isfinite(value):  # a diverged report would flatten the axis
            run.writer.scalar(objective_tag(self.metric), value, step)
            run.last = (step, value)

    def trial_finished(self, study: Any, trial: FrozenTrial) -> None:
        best = None if study.incumbent is None else study.incumbent.value
        run = self._runs.pop(trial.number, None)
        if run is not None:
            end_step = 0 if run.last is None else run.last[0] + 1
            if trial.value is not None and (run.last is None or run.last[1] != trial.value):
                # the objective differs from the last report (or nothing was reported): it
                # goes last, so it is the value the HParams table shows
                run.writer.scalar(objective_tag(self.metric), trial.value, end_step)
            run.writer.scalar(PRUNED_TAG, float(trial.state is TrialState.PRUNED), max(end_step, 1))
            run.writer.summary(session_end_summary(trial.state))
            run.writer.close()
        if trial.value is not None and trial.state is TrialState.COMPLETE:
            self.study_writer.scalar(f"study/{self.metric}", trial.value, trial.number)
        if best is not None:
            self.study_writer.scalar(f"study/best_{self.metric}", best, trial.number)

    def sampler_explained(self, study: Any, expl: Explanation, number: int) -> None:
        from torchtune_hp.board.figures import importance_png, slices_png  # matplotlib on use

        self.study_writer.image("gp/slices", slices_png(expl, self.metric, number), number)
        self.study_writer.image("gp/importance", importance_png(expl.importance, number), number)

    def study_closed(self, study: Any) -> None:
        self.close()

    def close(self) -> None:
        """Ends the sessions of trials still open (an interrupted run) as FAILED."""
        for run in self._runs.values():
            run.writer.summary(session_end_summary(TrialState.FAILED))
            run.writer.close()
        self._runs.clear()
        if self._study_writer is not None:
            self._study_writer.close()
            self._study_writer = None

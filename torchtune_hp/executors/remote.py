"""The trial as seen from inside the process that runs it, and ``torchtune_hp.report()``.

One trial object per process, registered in one place: :func:`activate` registers the trial an
in-process objective runs, and :func:`current_trial` otherwise builds the trial this process
was launched for from its environment, once, and keeps it. ``report()``, ``TuneCallback()``
and a worker's objective therefore all talk through the same object, with one sequence of
reports and one prune verdict.

A launched trial (a script run by the subprocess executor, or a function run in a worker
process) learns who it is from the environment the launcher sets: ``TORCHTUNE_HP_TRIAL``
(number), ``TORCHTUNE_HP_TRIAL_DIR`` (its run folder, absolute), ``TORCHTUNE_HP_STUDY``,
``TORCHTUNE_HP_METRIC``, ``TORCHTUNE_HP_MODE``, ``TORCHTUNE_HP_PARAMS`` (JSON) and
``TORCHTUNE_HP_LAUNCH`` (a token that marks what this process writes), and for a study that
pauses trials ``TORCHTUNE_HP_PAUSES`` (1) and, on a resumed run, ``TORCHTUNE_HP_RESUME_FROM``
(the step of the trial's last report; see :class:`~torchtune_hp.trial.Pausable`). Its reports
travel to the driver through the run folder (:mod:`torchtune_hp.executors.channel`) and the
pruner's answer comes back the same way.
"""

from __future__ import annotations

import contextvars
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torchtune_hp.executors import channel
from torchtune_hp.outcome import NotANumber, as_number
from torchtune_hp.trial import Pausable, first_step

ENV_TRIAL = "TORCHTUNE_HP_TRIAL"
ENV_TRIAL_DIR = "TORCHTUNE_HP_TRIAL_DIR"
ENV_STUDY = "TORCHTUNE_HP_STUDY"
ENV_METRIC = "TORCHTUNE_HP_METRIC"
ENV_MODE = "TORCHTUNE_HP_MODE"
ENV_PARAMS = "TORCHTUNE_HP_PARAMS"
ENV_LAUNCH = "TORCHTUNE_HP_LAUNCH"
ENV_PAUSES = "TORCHTUNE_HP_PAUSES"
ENV_RESUME_FROM = "TORCHTUNE_HP_RESUME_FROM"
ENV_PRUNER = "TORCHTUNE_HP_PRUNER"


def resume_from_env(env: Mapping[str, str]) -> int | None:
    """A launched trial's ``resume_from``, as its environment says (None on a first run)."""
    value = env.get(ENV_RESUME_FROM)
    return int(value) if value else None


def waits_for_answers(env: Mapping[str, str]) -> bool:
    """Whether a launched trial's reports wait for the pruner's answer: not in a study
    without a pruner, where the answer can only be 'go on'."""
    return env.get(ENV_PRUNER, "") != "none"


# The trial an in-process objective is running, set by the executor around the objective call.
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("torchtune_hp_trial", default=None)
# The trial this process was launched for: built from the environment once.
_LAUNCHED: list[RemoteTrial | None] = []


class RemoteTrial(Pausable):
    """What ``Trial`` offers an objective (``number``, ``params``, ``report``,
    ``should_prune``, ``pruned``, ``logger``, ``devices``, ``accelerator``, and for a paused
    trial what :class:`~torchtune_hp.trial.Pausable` says), for a trial run by another process
    than the driver."""

    def __init__(
        self,
        number: int,
        params: dict[str, Any],
        run_dir: Path,
        metric: str,
        mode: str,
        launch: str = "",
        devices: list[int] | None = None,
        pauses: bool = False,
        resume_from: int | None = None,
        prunes: bool = True,
    ) -> None:
        self.number = number
        self.params = params
        self.run_dir = run_dir
        self.metric = metric
        self.mode = mode
        self.launch = launch
        self.devices = list(devices or [])
        self.pauses = pauses
        self.resume_from = resume_from
        self.prunes = prunes  # the study has a pruner: a report waits for its answer
        self.pruned = False
        self._seq = 0
        self._verdict = False

    @property
    def run_folder(self) -> Path:
        return self.run_dir

    @classmethod
    def from_env(cls) -> RemoteTrial | None:
        if ENV_TRIAL_DIR not in os.environ:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        n_devices = 0 if not visible else len([d for d in visible.split(",") if d.strip()])
        return cls(
            int(os.environ[ENV_TRIAL]),
            json.loads(os.environ.get(ENV_PARAMS, "{}")),
            Path(os.environ[ENV_TRIAL_DIR]),
            os.environ.get(ENV_METRIC, "value"),
            os.environ.get(ENV_MODE, "min"),
            os.environ.get(ENV_LAUNCH, ""),
            list(range(n_devices)),
            os.environ.get(ENV_PAUSES) == "1",
            resume_from_env(os.environ),
            waits_for_answers(os.environ),
        )

    @property
    def accelerator(self) -> str:
        return "gpu" if self.devices else "cpu"

    def report(self, value: float, step: int | None = None) -> None:
        self.report_values({self.metric: value}, step)

    def report_values(self, values: dict[str, Any], step: int | None) -> bool:
        """Send the values; when the study's metric is among them, wait for the pruner."""
        self._seq += 1
        channel.append_report(self.run_dir, self.launch, self._seq, step, _jsonable(values))
        if self.metric in values and self.prunes:
            verdict = channel.wait_verdict(self.run_dir, self.launch, self._seq)
            if verdict is None:
                warnings.warn("torchtune_hp: the driver did not answer; going on", stacklevel=3)
            self._verdict = bool(verdict)
            self.pruned = self.pruned or self._verdict  # told to stop: it ends PRUNED
        return self._verdict

    def should_prune(self) -> bool:
        return self._verdict

    def note_stopped(self, signum: int) -> None:
        """This process is ending early on a stop signal it caught (Lightning exits 0 after
        SIGTERM): tell the driver, so the trial is not recorded as finished."""
        channel.note_stopped(self.run_dir, self.launch, signum)

    def logger(self, **options: Any) -> Any:
        from torchtune_hp.trial import trial_logger

        return trial_logger(self.run_dir, **options)

    def __repr__(self) -> str:
        return f"RemoteTrial(number={self.number}, params={self.params})"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Reported values as JSON: numbers as floats (NaN and inf too: Python's JSON carries them),
    anything else as the reason it is not a number (:class:`~torchtune_hp.outcome.NotANumber`),
    which the driver notes and skips."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        number, why = as_number(value)
        out[str(key)] = {NotANumber.MARK: why} if number is None else number
    return out


@contextmanager
def activate(trial: Any) -> Iterator[None]:
    """Make ``trial`` the one ``report()`` and ``TuneCallback()`` find while the block runs."""
    token = CURRENT.set(trial)
    try:
        yield
    finally:
        CURRENT.reset(token)


def current_trial() -> Any:
    """The running trial: the in-process one, else the one this process was launched for."""
    trial = CURRENT.get()
    if trial is not None:
        return trial
    if not _LAUNCHED:
        _LAUNCHED.append(RemoteTrial.from_env())
    return _LAUNCHED[0]


def report(step: int | None = None, **values: Any) -> bool:
    """Report metrics of the running trial, e.g. ``report(val_loss=0.31, step=epoch)``; returns
    True when the pruner says to stop (stop then; the trial ends PRUNED). ``step`` defaults to
    the number of earlier reports (on a resumed run, counted on from the trial's last
    report). Outside a study it warns and does nothing."""
    trial = current_trial()
    if trial is None:
        warnings.warn("torchtune_hp.report() outside a study: nothing recorded", stacklevel=2)
        return False
    counter = getattr(trial, "_auto_step", None)
    if counter is None:  # this run's first report: on a resumed run, after the trial's last
        counter = first_step(getattr(trial, "resume_from", None))
    step = counter if step is None else int(step)
    trial._auto_step = step + 1
    prune = trial.report_values(values, step)
    if prune:
        trial.pruned = True
    return prune

"""Trials: the record of one evaluation (:class:`FrozenTrial`) and the live handle an objective
receives (:class:`Trial`)."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchtune_hp.study import Study


class TrialState(str, enum.Enum):
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self is not TrialState.RUNNING


class TrialPruned(Exception):
    """Raised inside an objective to end its trial as PRUNED (the pruner said stop)."""


def params_key(params: Mapping[str, Any]) -> str:
    """Parameters as stored (JSON, keys sorted): equal for the same values whether they come
    from a sampler, the caller or back from the database, so sets and lookups can use it."""
    return json.dumps(params, sort_keys=True)


def unreported(metric: str, keys: set[str]) -> str:
    """A trial whose ``report()`` calls all named other values than the study's metric
    (``report(val_loss=...)`` in a study of ``metric="value"``): none was recorded and the
    pruner saw none of them, which would otherwise go unsaid."""
    return (
        f"its reports named {sorted(keys)}, never {metric!r} (the study's metric), so none "
        f"was recorded (no curve; the pruner saw nothing): report {metric}=..., or give the "
        f"study metric={sorted(keys)[0]!r}"
    )


class Interruption(str, enum.Enum):
    """Why a FAILED trial did not fail by itself; such a trial does not use up ``n_trials``.

    ``died``: the driver died while it ran (kill -9, a lost node); its parameters are retried
    once, so a trial that kills the driver cannot do so for ever. ``stopped``: the user stopped
    the study (Ctrl-C, SIGTERM, SIGHUP); its parameters are always run again. ``not_started``:
    its process could not be started (a missing or non-executable command)."""

    DIED = "died"
    STOPPED = "stopped"
    NOT_STARTED = "not_started"


# How the note line of a paused trial run again begins (the gp pruner's decision in words).
RESUMED = "resumed after"


class Origin(str, enum.Enum):
    """Where a trial's parameters came from; samplers count only their own draws."""

    SAMPLER = "sampler"
    ENQUEUED = "enqueued"
    RETRY = "retry"  # run again after the driver died while it ran (once only)
    RESUMED = "resumed"  # run again after the user stopped the study while it ran
    ADDED = "added"


@dataclass(frozen=True)
class FrozenTrial:
    """One row of a study, as storage holds it. ``interruption`` marks a FAILED trial that was
    stopped from outside (Ctrl-C, a dead driver, a command that could not start) rather than
    failed by its objective: it does not count toward ``n_trials``. ``note`` is what the
    sampler said of its suggestion (e.g. why the GP fell back to Sobol), or what the driver
    noticed about the trial's output (e.g. a regex match that was not a number)."""

    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None = None
    start: datetime | None = None
    end: datetime | None = None
    error: str | None = None
    origin: Origin = Origin.SAMPLER
    interruption: Interruption | None = None
    note: str | None = None
    # step -> value, in step order (storage reads them so, Study.report keeps them so): the
    # last report is the last item, found in O(1) by the pruners on every report
    intermediate: dict[int, float] = field(default_factory=dict)
    # time spent paused between runs (freeze-thaw) or waiting to be placed (Ray): not run,
    # so not in duration_s
    paused_s: float = 0.0

    @property
    def duration_s(self) -> float | None:
        """Seconds it ran: from its start to its end, less the time it spent paused or
        waiting to be placed."""
        if self.start is None or self.end is None:
            return None
        return max(0.0, (self.end - self.start).total_seconds() - self.paused_s)

    @property
    def resumes(self) -> list[str]:
        """What the pruner said each time it ran this paused trial again (freeze-thaw), oldest
        first: the lines of its note that say so."""
        return [line for line in (self.note or "").splitlines() if line.startswith(RESUMED)]

    @property
    def interrupted(self) -> bool:
        return self.interruption is not None

    @property
    def counts(self) -> bool:
        """Whether this trial uses up one of the study's ``n_trials``."""
        return self.state.finished and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state.value,
            "params": self.params,
            # a trial pruned for diverging holds inf, which JSON cannot carry
            "value": self.value if self.value is None or math.isfinite(self.value) else None,
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "duration_s": self.duration_s,
            "error": self.error,
            "note": self.note,
        }


def best_of(trials: Sequence[FrozenTrial], mode: str) -> FrozenTrial | None:
    """The COMPLETE trial with the lowest (``min``) or highest (``max``) value; ties go to the
    earlier trial."""
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    sign = 1.0 if mode == "min" else -1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number), default=None)


def iso_time(t: datetime | None) -> str | None:
    """A trial's time as ISO 8601 UTC with a ``Z`` (``--format json`` and ``csv``)."""
    return None if t is None else t.isoformat().replace("+00:00", "Z")


PAUSE_CHECKPOINT = "pause.ckpt"  # in the trial's folder: where a paused trial's state is kept


def first_step(resume_from: int | None) -> int:
    """The step a run counts its reports from where it gives none (``report()`` without
    ``step``, each ``metric_regex`` match): 0, or on a resumed run the one after the trial's
    last report, so that run's reports go on from there and never replace earlier ones."""
    return 0 if resume_from is None else resume_from + 1


class Pausable:
    """What a paused trial's objective needs, the same in the driver and in a worker process
    (``pruner: {name: gp, resume: true}``): ``pauses`` (the study may resume a stopped trial,
    so keep its state when told to stop), ``resume_from`` (None on a first run; on a resumed
    run, the step of the trial's last report: go on after it), ``checkpoint_path`` (where to
    keep that state: ``<trial folder>/pause.ckpt``; :class:`~torchtune_hp.TuneCallback` saves
    the Lightning checkpoint there) and ``ckpt_path`` (that file when resuming and it exists,
    else None: ``trainer.fit(..., ckpt_path=trial.ckpt_path)``)."""

    pauses: bool = False
    resume_from: int | None = None

    @property
    def run_folder(self) -> Path | None:
        raise NotImplementedError

    @property
    def checkpoint_path(self) -> Path | None:
        folder = self.run_folder
        return None if folder is None else folder / PAUSE_CHECKPOINT

    @property
    def ckpt_path(self) -> str | None:
        path = self.checkpoint_path
        if self.resume_from is None or path is None or not path.is_file():
            return None
        return str(path)


class Trial(Pausable):
    """What an objective receives: ``number``, ``params`` (a plain dict), ``report``, and the
    devices the executor gave it (``devices``: CUDA device indices as this process sees them,
    empty for CPU; ``accelerator``: ``"gpu"`` or ``"cpu"``, ready for ``L.Trainer``); for a
    paused trial run again, see :class:`Pausable`."""

    def __init__(
        self,
        study: Study,
        number: int,
        params: dict[str, Any],
        devices: list[int] | None = None,
        resume_from: int | None = None,
    ) -> None:
        self.study = study
        self.number = number
        self.params = dict(params)
        self.devices = list(devices or [])
        self.pruned = False
        self.resume_from = resume_from
        self.pauses = bool(getattr(study.pruner, "resume", False))

    @property
    def run_folder(self) -> Path | None:
        return None if self.study.dir is None else self.study.trial_dir(self.number)

    @property
    def accelerator(self) -> str:
        return "gpu" if self.devices else "cpu"

    def report(self, value: float, step: int | None = None) -> None:
        """Record an intermediate value (e.g. the validation loss after epoch ``step``; by
        default the step after the last reported one)."""
        self.study.report(self, value, step)

    @property
    def metric(self) -> str:
        return self.study.metric

    @property
    def mode(self) -> str:
        return self.study.mode

    def report_values(self, values: dict[str, Any], step: int) -> bool:
        """Record the study's metric from ``values`` (others are ignored here) and return
        whether to prune; ``torchtune_hp.report()`` calls this on either kind of trial."""
        if self.metric not in values:
            self.study.reported_other(self.number, values)
            return False
        self.report(values[self.metric], step)
        return self.should_prune()

    def should_prune(self) -> bool:
        """Whether the study's pruner says to stop now, from the values reported so far. Once
        it has said so the trial ends PRUNED, however the objective then returns (stop, or
        raise :class:`TrialPruned`): the same in this process and in a worker process."""
        if self.study.should_prune(self):
            self.pruned = True
        return self.pruned

    def logger(self, **options: Any) -> Any:
        """A Lightning ``TensorBoardLogger`` into this trial's run folder (see
        :func:`trial_logger`)."""
        if self.study.dir is None:
            raise ValueError("trial.logger() needs a study with a logdir (logdir=None keeps none)")
        return trial_logger(self.study.trial_dir(self.number), **options)

    def __repr__(self) -> str:
        again = "" if self.resume_from is None else f", resume_from={self.resume_from}"
        return f"Trial(number={self.number}, params={self.params}{again})"


def trial_logger(run_dir: Path, **options: Any) -> Any:
    """A Lightning ``TensorBoardLogger`` that writes into ``run_dir`` itself
    (``logs/<study>/trial_NNNN/``, no ``version_N`` sub-run), beside the trial's HParams
    session. ``options`` go to ``TensorBoardLogger`` as given (``log_graph``, ``prefix``,
    ``sub_dir``...); ``default_hp_metric`` is off unless asked for, so no ``hp_metric = -1``
    column appears in the HParams table."""
    from lightning.pytorch.loggers import TensorBoardLogger

    fixed = sorted({"save_dir", "name", "version"} & set(options))
    if fixed:
        raise TypeError(f"trial.logger() chooses {fixed} itself (the trial's run folder)")
    options.setdefault("default_hp_metric", False)
    return TensorBoardLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="", **options)

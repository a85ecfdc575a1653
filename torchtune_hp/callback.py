"""The Lightning callback: report the monitored metric each validation epoch and stop a trial
the pruner rejects. The step is the epoch; where validation runs more than once an epoch
(``val_check_interval`` below an epoch's batches, or a time interval) it is the validation's
number in the run instead (0, 1, 2, ...): the epoch would repeat, and each report would replace
the last at one step. Modeled on Lightning's ``EarlyStopping`` (``monitor``, ``mode``,
``strict``; decides in ``on_validation_end``; skips the sanity check and any validation
outside ``fit``: a ``trainer.validate()`` before or after training is not a training epoch).

Only global rank zero talks to the study; its decision is broadcast to every rank and training
ends through ``trainer.should_stop``, so no rank is left waiting in a collective. Nothing is
raised inside ``fit()``: the study sees ``trial.pruned`` after the objective returns and records
the trial PRUNED.
"""

from __future__ import annotations

import contextlib
import math
import signal
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from torchtune_hp.executors.remote import current_trial


class TuneCallback(L.Callback):
    """``trial`` defaults to the running one: the in-process trial, or in a script launched by
    the subprocess executor the trial named by its environment, so a LightningCLI script gets
    it with ``--trainer.callbacks+=torchtune_hp.TuneCallback`` and no code change. ``monitor``
    defaults to the study's metric (``val_loss`` when the study's is the generic ``value``) and
    ``mode`` to the study's."""

    def __init__(
        self,
        trial: Any = None,
        monitor: str | None = None,
        mode: str | None = None,
        strict: bool = True,
    ) -> None:
        if trial is None:
            trial = current_trial()
            if trial is None:
                raise ValueError(
                    "TuneCallback() without a trial runs only inside a study: pass "
                    "TuneCallback(trial) or launch the script with torchtune-hp"
                )
        study_metric = getattr(trial, "metric", "value")
        study_mode = getattr(trial, "mode", "min")
        if monitor is None and study_metric == "value" and study_mode == "max":
            raise ValueError(
                "TuneCallback monitors 'val_loss' unless told otherwise (the study's metric is "
                "the generic 'value'), but the study maximizes: it would keep the worst runs. "
                "Pass monitor= (TuneCallback(trial, monitor='val_acc')), or give the study "
                "that metric (Study(..., metric='val_acc', mode='max'))"
            )
        if monitor is None:
            monitor = "val_loss" if study_metric == "value" else study_metric
        mode = mode or study_mode
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if mode != study_mode:
            raise ValueError(f"TuneCallback(mode={mode!r}) differs from the study's {study_mode!r}")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.strict = strict
        self.pruned = False
        self.reports = 0
        self.validations = 0  # in training, on every rank: a step where the epoch repeats
        self._by_validation = False
        self._pause_pending: str | None = None  # stopped: where _keep_for_resume saves it

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        study = getattr(self.trial, "study", None)
        if trainer.world_size > 1 and study is not None and study.dir is None:
            raise ValueError(
                "a distributed (DDP) trial needs a study with a logdir: with logdir=None every "
                "rank would run its own in-memory study with its own parameters"
            )
        # the pause checkpoint is written after every other callback has seen the paused
        # validation (see keep_for_resume): Lightning runs a ModelCheckpoint last
        trainer.callbacks[:] = [c for c in trainer.callbacks if not _saves_for(c, self)]
        trainer.callbacks.append(_SavesThePause(self))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._by_validation = validates_within_epochs(trainer)
        self._pause_pending = None  # a fit that ended otherwise (a crash) saves nothing now

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # as EarlyStopping: a validate() before or after fit is no training epoch
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            message = (
                f"TuneCallback: metric {self.monitor!r} was not logged; "
                f"available: {sorted(metrics)}"
            )
            if self.strict:
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return
        step = self.validations if self._by_validation else trainer.current_epoch
        self.validations += 1  # before a pause saves it: a resumed run goes on after it
        prune = False
        if trainer.is_global_zero:
            value = float(metrics[self.monitor])
            self.trial.report(value, step)
            self.reports += 1
            # at the last validation stopping saves nothing: the run ends COMPLETE with its
            # value; a diverged one (NaN, inf) is still stopped, and recorded the worst
            last = self._last_validation(trainer) and math.isfinite(value)
            prune = not last and self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self._pause_pending = "validation" if self._by_validation else "end"
            self.pruned = True
            self.trial.pruned = True
            trainer.should_stop = True

    def _last_validation(self, trainer: L.Trainer) -> bool:
        """Whether no validation follows this one in this fit: ``max_steps`` reached, or the
        fit ends (``max_epochs``, ``max_steps``) before the batch of the next validation, as
        Lightning places them (every ``val_check_interval`` batches of an epoch or, with
        ``check_val_every_n_epoch=None``, of the whole fit; every ``check_val_every_n_epoch``
        epochs). What it cannot tell (a time limit, early stopping, validation at a time
        interval) is not the last: the pruner decides as usual."""
        if 0 <= trainer.max_steps <= trainer.global_step:
            return True
        ahead = _next_validation(trainer)
        if ahead is None:  # a stream without a length, validated at its epochs' ends
            return not self._by_validation and _ends_within(
                trainer, trainer.check_val_every_n_epoch or 1
            )
        epoch, steps = ahead
        most = trainer.max_epochs
        if most is not None and 0 <= most <= epoch:
            return True
        return 0 <= trainer.max_steps < trainer.global_step + steps

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Training ends on a stop signal that Lightning caught: it exits 0 after SIGTERM (1
        after Ctrl-C), with the trial's reports so far looking like a finished run. A launched
        trial tells the driver (an in-process one needs not: the driver got the signal)."""
        signum = _stop_signal(exception)
        note = getattr(self.trial, "note_stopped", None)
        if signum is not None and note is not None and trainer.is_global_zero:  # one rank says
            with contextlib.suppress(OSError):  # never in place of Lightning's own ending
                note(signum)

    def _keep_for_resume(self, trainer: L.Trainer, at: str) -> None:
        """A study that pauses stopped trials (``pruner: {name: gp, resume: true}``) may run
        this one again from here: save the whole training state (every rank takes part, rank
        zero writes) where ``trial.ckpt_path`` will find it, ``<trial folder>/pause.ckpt``,
        as it was before the stop (this callback not pruned: a resumed run goes on).

        Saved once every other callback has seen the paused validation: where validation ends
        an epoch, at the fit's end (``at="end"``: a ModelCheckpoint or EarlyStopping of the
        user's acts at the epoch's end, after validation; saved at the validation itself, the
        resumed run began inside the finished epoch, where an EarlyStopping found no metric);
        within an epoch, after every callback's on_validation_end (``at="validation"``)."""
        if self._pause_pending != at:
            return
        self._pause_pending = None
        path = getattr(self.trial, "checkpoint_path", None)
        if getattr(self.trial, "pauses", False) and path is not None:
            self.pruned = False
            try:
                trainer.save_checkpoint(path)
            finally:
                self.pruned = True

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "reports": self.reports, "validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict["pruned"])
        self.reports = int(state_dict["reports"])
        self.validations = int(state_dict.get("validations", self.reports))


class _SavesThePause(L.Callback):
    """The last callback of a fit: saves the pause checkpoint of its TuneCallback once every
    other callback has seen the validation that stopped the trial."""

    def __init__(self, owner: TuneCallback) -> None:
        self.owner = owner

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.owner._keep_for_resume(trainer, "validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.owner._keep_for_resume(trainer, "end")


def _saves_for(callback: Any, owner: TuneCallback) -> bool:
    return isinstance(callback, _SavesThePause) and callback.owner is owner


def _next_validation(trainer: L.Trainer) -> tuple[int, int] | None:
    """The epoch of the next validation after this one and the optimizer steps until its
    batch (with gradient accumulation: one per ``accumulate_grad_batches`` batches and one
    at an epoch's end), counted as Lightning's training loop counts; None where validation
    is not placed by batch counts (a time interval, a stream validated at its end)."""
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return None
    n, each = trainer.num_training_batches, getattr(trainer, "val_check_batch", None)
    if not isinstance(each, int) or each < 1:
        return None
    loop = trainer.fit_loop.epoch_loop
    epoch, at, every = trainer.current_epoch, loop.batch_idx, trainer.check_val_every_n_epoch
    accumulate = max(1, trainer.accumulate_grad_batches)
    if n == float("inf"):  # a stream without a length: every `each` batches of its one epoch
        ahead = each - (at + 1) % each
        return epoch, (at + 1 + ahead) // accumulate - (at + 1) // accumulate
    if not isinstance(n, int) or n < 1:
        return None
    if every is None:  # every `each` batches of the whole fit
        ahead = each - (loop.total_batch_idx + 1) % each
        to = at + ahead  # in this epoch's numbering: epochs ahead are whole multiples of n
        epoch_at, index = epoch + to // n, to % n
    else:
        index = (at + 1) // each * each + each - 1  # the next in this epoch, if there is one
        epoch_at = epoch
        if index >= n:
            epoch_at, index = epoch + 1, each - 1
            while (epoch_at + 1) % every:
                epoch_at += 1

    def steps_up_to(i: int) -> int:  # optimizer steps in an epoch's batches 0..i
        return (i + 1) // accumulate + (1 if i == n - 1 and n % accumulate else 0)

    per_epoch = steps_up_to(n - 1)
    if epoch_at == epoch:
        steps = steps_up_to(index) - steps_up_to(at)
    else:
        steps = per_epoch - steps_up_to(at) + (epoch_at - epoch - 1) * per_epoch
        steps += steps_up_to(index)
    return epoch_at, steps


def _ends_within(trainer: L.Trainer, every: int) -> bool:
    """Whether the fit ends within ``every`` epochs of the current one (``max_epochs``)."""
    most = trainer.max_epochs
    return most is not None and most >= 0 and trainer.current_epoch + every >= most


def validates_within_epochs(trainer: L.Trainer) -> bool:
    """Whether this fit validates anywhere but at the end of an epoch, so that two validations
    can fall in one epoch: every ``val_check_interval`` batches fewer than an epoch's, every
    so many batches counted across epochs that are not a whole number of epochs
    (``check_val_every_n_epoch=None``), every so many batches of a stream without a length,
    or at a time interval. Read once training starts,
    when Lightning has set the batch counts; anything it cannot tell is an epoch's end."""
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return True
    every, per_epoch = getattr(trainer, "val_check_batch", None), trainer.num_training_batches
    if not isinstance(every, int):
        return False  # at an epoch's end (inf: an iterable dataset, validated when it ends)
    if per_epoch == float("inf"):
        return True  # every N batches of an endless epoch (a stream, trained for max_steps)
    if not isinstance(per_epoch, int) or per_epoch < 1:
        return False
    if trainer.check_val_every_n_epoch is None:
        return every % per_epoch != 0
    return every < per_epoch


def _stop_signal(exception: BaseException) -> int | None:
    """The stop signal behind a Lightning exception: SIGTERM for its ``SIGTERMException``, the
    signal of a ``KeyboardInterrupt`` (SIGINT unless it says otherwise), else None."""
    if isinstance(exception, SIGTERMException):
        return signal.SIGTERM
    if isinstance(exception, KeyboardInterrupt):
        return getattr(exception, "signum", signal.SIGINT)
    return None

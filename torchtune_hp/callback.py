"""The Lightning callback: report the monitored metric each validation epoch and stop a trial
the pruner rejects. Modeled on Lightning's ``EarlyStopping`` (``monitor``, ``mode``,
``strict``; decides in ``on_validation_end``; skips the sanity check).

Only global rank zero talks to the study; its decision is broadcast to every rank and training
ends through ``trainer.should_stop``, so no rank is left waiting in a collective. Nothing is
raised inside ``fit()``: the study sees ``trial.pruned`` after the objective returns and records
the trial PRUNED.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L

from torchtune_hp.trial import Trial


class TuneCallback(L.Callback):
    def __init__(
        self, trial: Trial, monitor: str = "val_loss", mode: str = "min", strict: bool = True
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        study_mode = getattr(getattr(trial, "study", None), "mode", mode)
        if mode != study_mode:
            raise ValueError(f"TuneCallback(mode={mode!r}) differs from the study's {study_mode!r}")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.strict = strict
        self.pruned = False
        self.reports = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
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
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(metrics[self.monitor]), trainer.current_epoch)
            self.reports += 1
            prune = self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned = True
            self.trial.pruned = True
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "reports": self.reports}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict["pruned"])
        self.reports = int(state_dict["reports"])

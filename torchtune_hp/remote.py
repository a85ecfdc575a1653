"""The trial as seen from inside a trial process, and ``torchtune_hp.report()``.

A launched trial (a script run by the subprocess executor, or a function run in a worker
process) learns who it is from the environment the launcher sets:

``TORCHTUNE_HP_TRIAL`` (number), ``TORCHTUNE_HP_TRIAL_DIR`` (its run folder),
``TORCHTUNE_HP_STUDY``, ``TORCHTUNE_HP_METRIC``, ``TORCHTUNE_HP_MODE`` and
``TORCHTUNE_HP_PARAMS`` (JSON). Its reports travel to the driver through the run folder
(:mod:`torchtune_hp.executors.channel`) and the pruner's answer comes back the same way.
"""

from __future__ import annotations

import contextvars
import json
import os
import warnings
from pathlib import Path
from typing import Any

from torchtune_hp.executors import channel

ENV_TRIAL = "TORCHTUNE_HP_TRIAL"
ENV_TRIAL_DIR = "TORCHTUNE_HP_TRIAL_DIR"
ENV_STUDY = "TORCHTUNE_HP_STUDY"
ENV_METRIC = "TORCHTUNE_HP_METRIC"
ENV_MODE = "TORCHTUNE_HP_MODE"
ENV_PARAMS = "TORCHTUNE_HP_PARAMS"

# The trial an in-process objective is running, set by Study around the objective call.
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("torchtune_hp_trial", default=None)


class RemoteTrial:
    """What ``Trial`` offers an objective (``number``, ``params``, ``report``,
    ``should_prune``, ``pruned``, ``logger``), for a trial run by another process."""

    def __init__(self, number: int, params: dict[str, Any], run_dir: Path, metric: str, mode: str):
        self.number = number
        self.params = params
        self.run_dir = run_dir
        self.metric = metric
        self.mode = mode
        self.pruned = False
        self._seq = 0
        self._verdict = False

    @classmethod
    def from_env(cls) -> RemoteTrial | None:
        if ENV_TRIAL_DIR not in os.environ:
            return None
        return cls(
            int(os.environ[ENV_TRIAL]),
            json.loads(os.environ.get(ENV_PARAMS, "{}")),
            Path(os.environ[ENV_TRIAL_DIR]),
            os.environ.get(ENV_METRIC, "value"),
            os.environ.get(ENV_MODE, "min"),
        )

    def report(self, value: float, step: int) -> None:
        self.report_values({self.metric: float(value)}, step)

    def report_values(self, values: dict[str, float], step: int) -> bool:
        """Send the values; when the study's metric is among them, wait for the pruner."""
        self._seq += 1
        channel.append_report(self.run_dir, self._seq, step, values)
        if self.metric in values:
            verdict = channel.wait_verdict(self.run_dir, self._seq)
            if verdict is None:
                warnings.warn("torchtune_hp: the driver did not answer; going on", stacklevel=3)
            self._verdict = bool(verdict)
        return self._verdict

    def should_prune(self) -> bool:
        return self._verdict

    def logger(self, **options: Any) -> Any:
        from torchtune_hp.trial import trial_logger

        return trial_logger(self.run_dir, **options)

    def __repr__(self) -> str:
        return f"RemoteTrial(number={self.number}, params={self.params})"


_REMOTE: list[RemoteTrial | None] = []


def current_trial() -> Any:
    """The running trial: the in-process one, else the one this process was launched for."""
    trial = CURRENT.get()
    if trial is not None:
        return trial
    if not _REMOTE:
        _REMOTE.append(RemoteTrial.from_env())
    return _REMOTE[0]


def report(step: int | None = None, **values: float) -> bool:
    """Report metrics of the running trial, e.g. ``report(val_loss=0.31, step=epoch)``; returns
    True when the pruner says to stop (stop then; the trial ends PRUNED). ``step`` defaults to
    the number of earlier reports. Outside a study it warns and does nothing."""
    trial = current_trial()
    if trial is None:
        warnings.warn("torchtune_hp.report() outside a study: nothing recorded", stacklevel=2)
        return False
    counter = getattr(trial, "_auto_step", 0)
    step = counter if step is None else int(step)
    trial._auto_step = step + 1
    prune = trial.report_values({k: float(v) for k, v in values.items()}, step)
    if prune:
        trial.pruned = True
    return prune

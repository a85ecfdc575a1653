"""The in-process executor: the objective runs in the driver's own process, one trial at a time.

Fast (no process start, the data set loaded once) and debuggable: a breakpoint or pdb in the
objective works. The trial is registered for ``torchtune_hp.report()`` and ``TuneCallback()``
while it runs, and it is handed the devices of the executor's slot (``trial.devices``).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torchtune_hp import signals
from torchtune_hp.executors import Finished
from torchtune_hp.executors.remote import activate
from torchtune_hp.outcome import Outcome, call_objective, called_exit
from torchtune_hp.trial import Trial, TrialState


class InlineExecutor:
    capacity = 1

    def __init__(
        self,
        objective: Callable[[Trial], Any],
        devices: Sequence[int] = (),
        exit_fails_trial: bool = False,
    ) -> None:
        """``exit_fails_trial``: the objective's ``sys.exit()`` fails its trial and the study
        goes on, as in a worker process (a recipe's run, where the count of workers must not
        change what a trial's end means); otherwise it ends the program, as it does in Python
        (the Python API: a user's own signal handler may end a script that way). A stop
        signal's exit is a stop either way, and so is any exit while a signal handler of the
        program's own is installed (its policy, which may be to exit)."""
        self.objective = objective
        self.devices = list(devices)
        self.exit_fails_trial = exit_fails_trial
        self._done: list[Finished] = []

    @property
    def active(self) -> int:
        return len(self._done)

    def submit(self, trial: Trial) -> None:
        trial.devices = list(self.devices)
        with activate(trial):
            try:
                outcome = call_objective(lambda: self.objective(trial), trial.study.metric, trial)
            except SystemExit as e:
                # a stop, or maybe one: the program's own signal handler (a SIGTERM policy
                # installed by the objective's module) may end it with sys.exit()
                stop = signals.received() is not None or not signals.in_force()
                if not self.exit_fails_trial or stop:
                    raise
                outcome = Outcome.failed(f"{traceback.format_exc()}{called_exit(e.code)}")
        if outcome.state is TrialState.FAILED and trial.resume_from is None:  # a resumed one
            # that fails stays paused, and the study warns of that (Study._paused_after_failure)
            last = (outcome.error or "").strip().splitlines()[-1:] or [""]
            warnings.warn(f"trial {trial.number} failed: {last[0]}", stacklevel=5)
        self._done.append(Finished(trial, outcome))

    def wait(self, timeout_s: float) -> list[Finished]:
        done, self._done = self._done, []
        return done

    def stop_all(self) -> None:
        """Nothing to stop: the objective runs in the driver's thread, and the stop signal
        that ended the loop has ended it."""

    def close(self) -> None:
        """Nothing is held."""

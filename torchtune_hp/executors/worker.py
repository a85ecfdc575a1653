"""Runs one function objective in its own process: ``python -m torchtune_hp.executors.worker``.

The pool launches it for recipes with ``objective.function`` and ``executor.workers > 1`` or an
``objective.timeout`` (only a process can be stopped when it runs too long). Its
trial is the one this process was launched for (:func:`~torchtune_hp.executors.remote.
current_trial`, the same object ``report()`` and ``TuneCallback()`` use); it calls
``function(trial, **train)`` and leaves the outcome in ``result.json``, made by the same
function as in-process trials (:func:`~torchtune_hp.outcome.call_objective`). A failure's
traceback also goes to stderr, and the exit code is then 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from torchtune_hp.executors import channel
from torchtune_hp.executors.channel import write_result
from torchtune_hp.executors.remote import current_trial
from torchtune_hp.trial import TrialState

ENV_OBJECTIVE = "TORCHTUNE_HP_OBJECTIVE"  # <recipe path>::<file.py:function>
ENV_TRAIN = "TORCHTUNE_HP_TRAIN"


def main() -> int:
    from torchtune_hp.objective import load_objective
    from torchtune_hp.outcome import Outcome, call_objective, called_exit

    trial = current_trial()
    if trial is None:
        print("torchtune_hp's worker runs only under the torchtune-hp launcher", file=sys.stderr)
        return 2
    recipe_path, _, ref = os.environ[ENV_OBJECTIVE].partition("::")
    train = json.loads(os.environ.get(ENV_TRAIN, "{}"))

    def run() -> object:
        objective = load_objective(Path(recipe_path), ref, train)
        return objective(trial, **train)

    try:
        outcome = call_objective(run, trial.metric, trial)
    except SystemExit as e:
        # A nonzero exit already fails the trial, and one after a stop signal (Lightning exits
        # 0 after SIGTERM; TuneCallback notes it) is the driver's to judge, as before. An
        # exit 0 of its own ended only this process, without a value: its last report was
        # taken for one (COMPLETE). A nonzero one says so on stderr, which the failure quotes.
        if channel.read_stopped(trial.run_dir, trial.launch) is not None:
            raise
        where = f"{traceback.format_exc()}{called_exit(e.code, ' in its worker process')}"
        if e.code not in (0, None):
            print(where, file=sys.stderr)  # the last line: Python would print a str code after
            raise SystemExit(e.code if isinstance(e.code, int) else 1) from None
        outcome = Outcome.failed(where)
    write_result(trial.run_dir, trial.launch, outcome)
    if outcome.state is TrialState.FAILED:
        print(outcome.error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs one function objective in its own process: ``python -m torchtune_hp.worker``.

The pool launches it for recipes with ``objective.function`` and ``executor.workers > 1``. It
finds its trial in the environment (:mod:`torchtune_hp.remote`), calls
``function(trial, **train)`` and leaves the outcome in ``result.json``: the value, a prune, or
the error (its traceback also goes to stderr and the exit code is 1).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from torchtune_hp.executors.channel import RESULT
from torchtune_hp.remote import RemoteTrial
from torchtune_hp.trial import TrialPruned

ENV_OBJECTIVE = "TORCHTUNE_HP_OBJECTIVE"  # <recipe path>::<file.py:function>
ENV_TRAIN = "TORCHTUNE_HP_TRAIN"


def main() -> int:
    from torchtune_hp.recipe import load_objective
    from torchtune_hp.study import to_float

    trial = RemoteTrial.from_env()
    if trial is None:
        print("torchtune_hp.worker runs only under the torchtune-hp launcher", file=sys.stderr)
        return 2
    recipe_path, _, ref = os.environ[ENV_OBJECTIVE].partition("::")
    train = json.loads(os.environ.get(ENV_TRAIN, "{}"))
    out = trial.run_dir / RESULT
    try:
        objective = load_objective(Path(recipe_path), ref, train)
        value = objective(trial, **train)
        if trial.pruned:
            raise TrialPruned
        if isinstance(value, Mapping):
            value = value[trial.metric]
        out.write_text(json.dumps({"value": to_float(value)}))
    except TrialPruned:
        out.write_text(json.dumps({"pruned": True}))
    except Exception:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        out.write_text(json.dumps({"error": tb}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

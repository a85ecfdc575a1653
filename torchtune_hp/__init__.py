"""torchtune_hp: hyperparameter tuning for PyTorch and Lightning.

Data flows one way: space -> sampler -> study (driver) -> executor -> trial -> storage.

Every name below loads on first use, so ``import torchtune_hp`` (which every script that calls
``torchtune_hp.report()`` pays, once per trial) costs milliseconds, and a Ctrl-C while the
command line starts up meets no half-imported package.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Categorical": "torchtune_hp.space",
    "Fixed": "torchtune_hp.space",
    "Float": "torchtune_hp.space",
    "Int": "torchtune_hp.space",
    "Space": "torchtune_hp.space",
    "FrozenTrial": "torchtune_hp.trial",
    "Trial": "torchtune_hp.trial",
    "TrialPruned": "torchtune_hp.trial",
    "TrialState": "torchtune_hp.trial",
    "GridSampler": "torchtune_hp.samplers",
    "RandomSampler": "torchtune_hp.samplers",
    "Sampler": "torchtune_hp.samplers",
    "SobolSampler": "torchtune_hp.samplers",
    "SpaceExhausted": "torchtune_hp.samplers",
    "Study": "torchtune_hp.study",
    "StudyMismatch": "torchtune_hp.errors",
    "StudyRecord": "torchtune_hp.record",
    "StudyStopped": "torchtune_hp.errors",
    "TimeLimitReached": "torchtune_hp.errors",
    "TuneCallback": "torchtune_hp.callback",
    "current_trial": "torchtune_hp.executors.remote",
    "load_study": "torchtune_hp.record",
    "report": "torchtune_hp.executors.remote",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchtune_hp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)

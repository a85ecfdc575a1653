"""torchtune_hp: hyperparameter tuning for PyTorch and Lightning.

Data flows one way: space -> sampler -> study (driver) -> trial -> storage.
"""

from torchtune_hp.remote import report
from torchtune_hp.samplers import GridSampler, RandomSampler, Sampler, SobolSampler, SpaceExhausted
from torchtune_hp.space import Categorical, Fixed, Float, Int, Space
from torchtune_hp.study import Study, StudyMismatch
from torchtune_hp.trial import FrozenTrial, Trial, TrialPruned, TrialState

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``TuneCallback`` loads Lightning on first use, so ``import torchtune_hp`` stays light."""
    if name == "TuneCallback":
        from torchtune_hp.callback import TuneCallback

        return TuneCallback
    raise AttributeError(f"module 'torchtune_hp' has no attribute {name!r}")


__all__ = [
    "Categorical",
    "Fixed",
    "Float",
    "FrozenTrial",
    "GridSampler",
    "Int",
    "RandomSampler",
    "Sampler",
    "SobolSampler",
    "Space",
    "SpaceExhausted",
    "Study",
    "StudyMismatch",
    "Trial",
    "TrialPruned",
    "TrialState",
    "TuneCallback",
    "report",
]

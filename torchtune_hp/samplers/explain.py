"""What a model-based sampler shows of itself: plain arrays, no model, no plotting.

The TensorBoard writer draws these; the sampler fills them. Values are in the objective's own
units (not the model's warped ones) and parameters in their natural units, so a picture reads
like the study's table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SliceView:
    """The model along one hyperparameter, the others held at the incumbent's values.

    ``x`` are natural values (for a categorical: its choices, plotted as labels). ``lower`` and
    ``upper`` bound the mean ± 2σ band; ``acquisition`` is on its own scale (``acq_label``)."""

    name: str
    x: list[Any]
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    acquisition: np.ndarray
    observed_x: list[Any]
    observed_y: np.ndarray
    observed_kind: list[str]  # "complete", "pruned" (its last value) or "failed" (imputed)
    incumbent: Any
    incumbent_value: float
    suggestion: Any
    log: bool = False
    categorical: bool = False


@dataclass
class Explanation:
    """One suggestion's view of the model: a slice per hyperparameter and their importance."""

    slices: list[SliceView]
    importance: dict[str, float]
    acq_label: str
    n_observations: int
    lower_is_better: bool = True
    suggested_by: str = ""  # how the suggestion was chosen: "log EI maximizer", "Thompson draw"
    after_study: bool = False  # drawn when the study ended: the suggestion is what would be next
    notes: list[str] = field(default_factory=list)

"""Uniform random search in the unit cube (log-aware through the space's encoding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from torchtune_hp.samplers.base import own_draws
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial


class RandomSampler:
    """Draw ``k`` comes from the generator seeded with ``(seed, k)``: reproducible and
    resumable, and independent of how many trials run at once."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def sample(
        self, space: Space, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, own_draws(trials, pending)])
        return space.decode(rng.random(space.dim).tolist())

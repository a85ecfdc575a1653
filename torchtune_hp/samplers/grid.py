"""Grid search: every grid point at most once, in a seeded shuffled order so that a study
stopped early has still covered the grid evenly (as Optuna's GridSampler does)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from torchtune_hp.samplers.base import SpaceExhausted
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial, Interruption, Origin, params_key

MAX_GRID_POINTS = 1_000_000


def _settled(trial: FrozenTrial) -> bool:
    """Whether a trial settles its grid point: it ran (to any end) or runs now. A point whose
    trial was interrupted (stopped, not started, or the driver died) is offered again, unless
    it was already the retry of a point whose driver died: then it is given up, so a point that
    kills the driver cannot do so for ever."""
    if not trial.interrupted:
        return True
    return trial.interruption is Interruption.DIED and trial.origin is Origin.RETRY


class GridSampler:
    """``resolution`` values per float/int dimension (an int, or a mapping per parameter name),
    every choice of a categorical. ``shuffle=False`` walks the grid in order."""

    name = "grid"

    def __init__(
        self, seed: int = 0, resolution: int | Mapping[str, int] = 5, shuffle: bool = True
    ) -> None:
        values = resolution.values() if isinstance(resolution, Mapping) else [resolution]
        for r in values:
            if isinstance(r, bool) or not isinstance(r, int) or r < 2:
                raise ValueError(
                    f"resolution must be an integer >= 2 (or a mapping of them), got {r!r}"
                )
        self.seed = seed
        self.resolution = resolution
        self.shuffle = shuffle
        self._cache: tuple[Space, list[dict[str, Any]]] | None = None

    def check_space(self, space: Space) -> None:
        """Raises ValueError when ``resolution`` names no parameter of ``space`` or the grid
        is too large to list, before any point is built (a recipe is checked at load)."""
        size = math.prod(len(axis) for axis in space.grid_axes(self.resolution))
        if size > MAX_GRID_POINTS:
            raise ValueError(
                f"resolution {self.resolution!r} makes a grid of {size} points (more than "
                f"{MAX_GRID_POINTS}); lower it or use random/sobol search"
            )

    def points(self, space: Space) -> list[dict[str, Any]]:
        if self._cache is None or self._cache[0] != space:
            self.check_space(space)
            grid = space.grid(self.resolution)
            if self.shuffle:
                order = np.random.default_rng(self.seed).permutation(len(grid))
                grid = [grid[i] for i in order]
            self._cache = (space, grid)
        return self._cache[1]

    def sample(
        self, space: Space, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        seen = {params_key(t.params) for t in (*trials, *pending) if _settled(t)}
        for point in self.points(space):
            if params_key(point) not in seen:
                return point
        raise SpaceExhausted(f"all {len(self.points(space))} grid points have been tried")

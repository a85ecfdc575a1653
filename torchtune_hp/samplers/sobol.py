"""Scrambled Sobol quasi-random search: spreads points more evenly than random search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchtune_hp.samplers.base import own_draws
from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial


def sobol_points(dim: int, seed: int, start: int, n: int) -> list[list[float]]:
    """Points ``start .. start + n - 1`` of the scrambled Sobol sequence of ``seed``;
    shape ``(n, dim)``."""
    from torch.quasirandom import SobolEngine  # torch loads only when Sobol is used

    engine = SobolEngine(max(dim, 1), scramble=True, seed=seed)
    if start:
        engine.fast_forward(start)
    return engine.draw(n, dtype=None).double()[:, :dim].tolist()


class SobolSampler:
    """Point ``k`` of one scrambled sequence per seed; a resumed study continues at ``k``."""

    name = "sobol"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def sample(
        self, space: Space, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        return space.decode(sobol_points(space.dim, self.seed, own_draws(trials, pending), 1)[0])

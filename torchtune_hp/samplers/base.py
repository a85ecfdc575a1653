"""The sampler interface: a pure function of (space, finished trials, pending trials) -> params.

A sampler never touches files, processes or TensorBoard; the study hands it the history and
records what it suggests. Seeded samplers derive their draw from ``(seed, k)``, where ``k``
counts the trials the sampler itself produced so far, so a resumed study continues its
sequence instead of replaying it.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, countOf
from typing import Any, ClassVar, Protocol, runtime_checkable

from torchtune_hp.space import Space
from torchtune_hp.trial import FrozenTrial, Origin


class SpaceExhausted(Exception):
    """The sampler has nothing left to suggest (a finished grid); the study ends cleanly."""


@runtime_checkable
class Sampler(Protocol):
    """What every sampler implements; ``name`` selects it in a recipe (``sampler.name``).

    A sampler may also set ``last_note`` (a string or None) after each ``sample``: the study
    stores it on the trial, so a fallback (e.g. the GP's) is recorded, never silent. One
    that has a ``horizon`` attribute is told the study's total number of trials by the trial
    loop (``optimize(n_trials)``, a recipe's ``study.trials``) before its first suggestion:
    the GP sampler spends the last share of them refining instead of exploring."""

    name: ClassVar[str]

    def sample(
        self, space: Space, trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        """The next parameters. ``trials`` are finished (any state), ``pending`` are RUNNING."""
        ...


def own_draws(trials: Sequence[FrozenTrial], pending: Sequence[FrozenTrial]) -> int:
    """How many trials the sampler produced so far: the index of its next draw. (Counted in C:
    at ten thousand trials a Python loop here would cost more than the rest of a trial.)"""
    origin = attrgetter("origin")
    return countOf(map(origin, trials), Origin.SAMPLER) + countOf(
        map(origin, pending), Origin.SAMPLER
    )

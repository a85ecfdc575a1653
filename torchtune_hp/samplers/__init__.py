"""Samplers by name: ``sampler.name`` in a recipe, ``Study(sampler=...)`` in Python."""

from __future__ import annotations

import inspect
from typing import Any

from torchtune_hp.samplers.base import Sampler, SpaceExhausted
from torchtune_hp.samplers.grid import GridSampler
from torchtune_hp.samplers.random import RandomSampler
from torchtune_hp.samplers.sobol import SobolSampler

SAMPLERS: dict[str, type] = {cls.name: cls for cls in (RandomSampler, SobolSampler, GridSampler)}


class SamplerOptionError(ValueError):
    """An unknown sampler name or option; ``key`` names it for the recipe's error message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def sampler_options(name: str) -> list[str]:
    """The options a sampler accepts besides ``seed``."""
    params = inspect.signature(SAMPLERS[name].__init__).parameters
    return [p for p in params if p not in ("self", "seed")]


def make_sampler(name: str, seed: int, options: dict[str, Any] | None = None) -> Sampler:
    if name not in SAMPLERS:
        raise SamplerOptionError(
            "name", f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}"
        )
    options = dict(options or {})
    allowed = sampler_options(name)
    for key in options:
        if key not in allowed:
            raise SamplerOptionError(
                key, f"sampler {name!r} has no option {key!r}; it accepts {allowed or 'none'}"
            )
    try:
        return SAMPLERS[name](seed=seed, **options)
    except (TypeError, ValueError) as e:
        raise SamplerOptionError(next(iter(options), "name"), f"sampler {name!r}: {e}") from e


__all__ = [
    "SAMPLERS",
    "GridSampler",
    "RandomSampler",
    "Sampler",
    "SamplerOptionError",
    "SobolSampler",
    "SpaceExhausted",
    "make_sampler",
    "sampler_options",
]

"""Samplers by name: ``sampler.name`` in a recipe, ``Study(sampler=...)`` in Python."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torchtune_hp.options import OptionError, accepted_options, build, check_name, check_options
from torchtune_hp.samplers.base import Sampler, SpaceExhausted
from torchtune_hp.samplers.grid import GridSampler
from torchtune_hp.samplers.random import RandomSampler
from torchtune_hp.samplers.sobol import SobolSampler

# name -> "module:Class"; imported on first use so `torchtune-hp ls` never loads GPyTorch.
SAMPLERS: dict[str, str] = {
    "random": "torchtune_hp.samplers.random:RandomSampler",
    "sobol": "torchtune_hp.samplers.sobol:SobolSampler",
    "grid": "torchtune_hp.samplers.grid:GridSampler",
    "gp": "torchtune_hp.samplers.gp:GPSampler",
}
# Passed by the study itself, not options a recipe sets.
_NOT_OPTIONS = ("self", "seed", "mode")


def sampler_class(name: str) -> type:
    module, _, cls = SAMPLERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


SamplerOptionError = OptionError  # an unknown sampler name or option; ``key`` names it


def sampler_options(name: str) -> list[str]:
    """The options a sampler accepts besides ``seed``."""
    return accepted_options(sampler_class(name).__init__, _NOT_OPTIONS)


def make_sampler(
    name: str, seed: int, options: dict[str, Any] | None = None, mode: str = "min"
) -> Sampler:
    """A sampler by name; ``mode`` reaches the samplers that model the objective (gp)."""
    check_name("sampler", name, list(SAMPLERS))
    options = dict(options or {})
    cls = sampler_class(name)
    check_options(cls.__init__, options, f"sampler {name!r}", _NOT_OPTIONS)
    fixed: dict[str, Any] = {"seed": seed}
    if "mode" in inspect.signature(cls.__init__).parameters:
        fixed["mode"] = mode
    return build(cls, f"sampler {name!r}", options, **fixed)


__all__ = [
    "SAMPLERS",
    "sampler_class",
    "GridSampler",
    "RandomSampler",
    "Sampler",
    "SamplerOptionError",
    "SobolSampler",
    "SpaceExhausted",
    "make_sampler",
    "sampler_options",
]

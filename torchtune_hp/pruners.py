"""Pruners: when to stop a trial early. Pure functions of the reported learning curves.

A trial's *resource* is the number of values it has reported (one per validation epoch with
the callback), so the rules do not depend on how steps are numbered. Values are compared in
the study's ``mode``; a trial's value at resource ``r`` is its best value among its first ``r``
reports (what a checkpoint-on-best run would keep).

* ``median`` (Golovin et al. 2017, as Optuna's MedianPruner): after ``n_warmup`` reports, stop
  a trial whose value is worse than the median of the other trials' values at the same
  resource, once ``n_startup`` other trials have reached it.
* ``asha`` (Li et al. 2020, asynchronous successive halving): rungs at ``min_resource *
  eta**k`` reports; a trial reaching a rung continues only if its value there is in the top
  ``1/eta`` of every trial that reached that rung (the first ``eta - 1`` arrivals continue if
  they are the best so far, since a trial cannot be paused and resumed).

* ``gp`` (:class:`torchtune_hp.gp.stopping.GPPruner`): a GP over (configuration, training
  progress) forecasts each running trial's final value from every curve the study has seen;
  a trial stops when it is unlikely to beat the best value so far or its remaining epochs buy
  more as a new trial. Before the model has seen curves end, ASHA's rank decides with it.

``median`` and ``asha`` take ``max_resource`` (Ray Tune's ``max_t``; the gp pruner has its
own), the reports of a full training: a trial that has made them is never stopped, since
stopping it then saves nothing and would leave a finished run PRUNED. The Lightning callback
never asks at its trial's last epoch either (:mod:`torchtune_hp.callback`).

All stop a trial at once when its latest report is NaN or inf (a diverging run, recorded by
the study as the worst value there is), and rank others against it as the worst at every
rung, its good early values included; ``none`` lets it run to its end.
"""

from __future__ import annotations

import importlib
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torchtune_hp.options import build, check_name, check_options
from torchtune_hp.trial import FrozenTrial, TrialState


@runtime_checkable
class Pruner(Protocol):
    name: str

    def prune(self, trial: FrozenTrial, others: Sequence[FrozenTrial], mode: str) -> bool:
        """Whether ``trial`` (RUNNING, with its reports so far) should stop now."""
        ...


def value_at(trial: FrozenTrial, resource: int, mode: str) -> float | None:
    """The trial's best value among its first ``resource`` reports; None if it has fewer."""
    if len(trial.intermediate) < resource or resource < 1:
        return None
    values = itertools.islice(trial.intermediate.values(), resource)  # kept in step order
    return min(values) if mode == "min" else max(values)


def rank_value(trial: FrozenTrial, resource: int, mode: str) -> float | None:
    """What another trial counts as at ``resource`` reports when a trial is ranked against
    it: its :func:`value_at`, but the worst value there is at every rung for a trial whose
    run diverged (its last report NaN or inf: every rule stops it there; told in O(1)). The
    study records such a trial as the worst, and its good early values foretold nothing:
    counted, they stopped healthy trials at the rungs it passed before it diverged, and at
    the later ones its pre-divergence best."""
    value = value_at(trial, resource, mode)
    if value is None or not diverged(trial):
        return value
    return math.inf if mode == "min" else -math.inf


def diverged(trial: FrozenTrial) -> bool:
    """Its latest report is not finite: the study records a NaN or inf report (a diverging
    run) as the worst value there is, and every pruning rule stops such a trial at once."""
    return bool(trial.intermediate) and not math.isfinite(
        next(reversed(trial.intermediate.values()))  # the last step's: kept in step order
    )


def at_end(trial: FrozenTrial, max_resource: int | None) -> bool:
    """Whether ``trial`` has made the ``max_resource`` reports of a full training."""
    return max_resource is not None and len(trial.intermediate) >= max_resource


def check_max_resource(max_resource: int | None, first: int, what: str) -> None:
    """``max_resource`` after the first decision (``first`` reports, ``what`` says whose):
    one at or before it would leave the pruner nothing to decide."""
    if max_resource is not None and (
        isinstance(max_resource, bool) or not isinstance(max_resource, int) or max_resource <= first
    ):
        raise ValueError(
            f"max_resource must be an integer > {first} ({what}), the reports at the first "
            f"decision: at or before it nothing would ever be stopped; got {max_resource!r}"
        )


def rung_resources(min_resource: int, eta: int, resource: int) -> list[int]:
    """The rungs ``min_resource * eta**k`` up to ``resource``: where ASHA and the gp pruner
    decide."""
    out, r = [], min_resource
    while r <= resource:
        out.append(r)
        r *= eta
    return out


def at_rung(min_resource: int, eta: int, resource: int) -> bool:
    """Whether ``resource`` reports is a rung ``min_resource * eta**k`` itself."""
    rungs = rung_resources(min_resource, eta, resource)
    return bool(rungs) and rungs[-1] == resource


def asha_rank(
    trial: FrozenTrial, others: Sequence[FrozenTrial], resource: int, mode: str, eta: int
) -> tuple[bool, int, int]:
    """ASHA's rule for ``trial`` at ``resource`` reports: whether it is outside the top
    ``1/eta`` of the trials that reached it (the first ``max(n // eta, 1)`` go on), how many
    other trials have a strictly better value there, and how many reached it, this one
    included."""
    mine = value_at(trial, resource, mode)
    assert mine is not None, "asha_rank needs the trial to have reached the resource"
    peers = [
        v for t in _competitors(others, trial) if (v := rank_value(t, resource, mode)) is not None
    ]
    better, n = sum(_worse(mine, v, mode) for v in peers), len(peers) + 1
    return better >= max(n // eta, 1), better, n


def _worse(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "min" else a < b


def _competitors(others: Sequence[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    return [
        t
        for t in others
        if t.number != trial.number and t.state is not TrialState.FAILED and t.intermediate
    ]


@dataclass
class NopPruner:
    name = "none"

    def prune(self, trial: FrozenTrial, others: Sequence[FrozenTrial], mode: str) -> bool:
        return False


def check_least(*checks: tuple[str, int, int]) -> None:
    """``(option, value, least)``: a ValueError for the first value below its least. The
    message starts with the option's name, so a recipe's error names that key."""
    for key, value, least in checks:
        if value < least:
            raise ValueError(f"{key} must be >= {least}, got {value!r}")


@dataclass
class MedianPruner:
    n_startup: int = 5
    n_warmup: int = 1
    max_resource: int | None = None

    name = "median"

    def __post_init__(self) -> None:
        check_least(("n_startup", self.n_startup, 1), ("n_warmup", self.n_warmup, 0))
        check_max_resource(self.max_resource, self.n_warmup, "n_warmup")

    def prune(self, trial: FrozenTrial, others: Sequence[FrozenTrial], mode: str) -> bool:
        if diverged(trial):
            return True
        if at_end(trial, self.max_resource):
            return False
        r = len(trial.intermediate)
        mine = value_at(trial, r, mode)
        if mine is None or r <= self.n_warmup:
            return False
        peers = [
            v for t in _competitors(others, trial) if (v := rank_value(t, r, mode)) is not None
        ]
        if len(peers) < self.n_startup:
            return False
        return _worse(mine, statistics.median(peers), mode)


@dataclass
class ASHAPruner:
    min_resource: int = 1
    eta: int = 3
    max_resource: int | None = None

    name = "asha"

    def __post_init__(self) -> None:
        check_least(("min_resource", self.min_resource, 1), ("eta", self.eta, 2))
        check_max_resource(self.max_resource, self.min_resource, "min_resource")

    def rungs(self, resource: int) -> list[int]:
        """The rung resources ``min_resource * eta**k`` up to ``resource``."""
        return rung_resources(self.min_resource, self.eta, resource)

    def prune(self, trial: FrozenTrial, others: Sequence[FrozenTrial], mode: str) -> bool:
        if diverged(trial):
            return True
        resource = len(trial.intermediate)
        if at_end(trial, self.max_resource) or not at_rung(self.min_resource, self.eta, resource):
            return False  # only decide when the trial arrives at a rung before its end
        return asha_rank(trial, others, resource, mode, self.eta)[0]


# name -> class, or "module:Class" imported on first use (the gp pruner loads GPyTorch).
PRUNERS: dict[str, type | str] = {
    "none": NopPruner,
    "median": MedianPruner,
    "asha": ASHAPruner,
    "gp": "torchtune_hp.gp.stopping:GPPruner",
}


def pruner_class(name: str) -> type:
    cls = PRUNERS[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        return getattr(importlib.import_module(module), attr)
    return cls


def make_pruner(name: str, options: dict | None = None) -> Pruner:
    """A pruner by name; raises :class:`~torchtune_hp.options.OptionError` naming the option."""
    check_name("pruner", name, list(PRUNERS))
    options = dict(options or {})
    cls = pruner_class(name)
    check_options(cls.__init__, options, f"pruner {name!r}")
    return build(cls, f"pruner {name!r}", options)

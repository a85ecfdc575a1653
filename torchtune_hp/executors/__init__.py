"""Where trials run. One small protocol (:class:`Executor`), one driver loop for all
(:func:`~torchtune_hp.executors.loop.run_trials`), and its implementations: in this process
(:mod:`~torchtune_hp.executors.inline`) and a pool of local processes
(:mod:`~torchtune_hp.executors.pool`). The trial's side of a launched process lives in
:mod:`~torchtune_hp.executors.remote` and :mod:`~torchtune_hp.executors.worker`.

A new executor (Ray, Slurm) is one more module implementing :class:`Executor`; the loop, the
study, the samplers and the pruners do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torchtune_hp.outcome import Outcome
    from torchtune_hp.trial import Trial


@dataclass(frozen=True)
class Finished:
    """A trial that ended, and how."""

    trial: Trial
    outcome: Outcome


class Executor(Protocol):
    """Runs trials for the driver loop. Reports travel from a running trial to the study while
    the loop waits (``wait`` forwards them: ``study.report``, ``study.should_prune``)."""

    capacity: int  # trials that may run at once

    @property
    def active(self) -> int:
        """Trials submitted and not yet returned by ``wait``."""
        ...

    def submit(self, trial: Trial) -> None:
        """Start ``trial`` (its ``params``, its folder ``study.trial_dir(number)``)."""
        ...

    def wait(self, timeout_s: float) -> list[Finished]:
        """The trials that ended since the last call, waiting up to ``timeout_s`` for one."""
        ...

    def stop_all(self) -> None:
        """Stop every running trial now (a stop signal, an error): nothing of theirs may keep
        running after this returns. Their outcomes are not returned; the loop records them,
        except for a trial found to have ended by itself before it could be stopped: its
        outcome stands, and the next ``wait`` returns it."""
        ...

    def close(self) -> None:
        """Give back what the executor holds (pipes, a cluster connection); nothing runs."""
        ...


__all__ = ["Executor", "Finished"]

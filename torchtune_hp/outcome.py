"""Where trial output enters the study: the one place that decides what it means.

The rule: whatever an objective returns, prints, writes or reports, the driver records it or
records why not, and nothing a trial produces can raise in the driver. Every executor (in
process, worker processes, launched scripts) turns a trial's output into an :class:`Outcome`
through these functions and nowhere else:

* a return value: :func:`outcome_of_return` (a number, a 0-d or one-element tensor or array, a
  NumPy scalar, or a mapping holding the metric; anything else is FAILED with the reason);
* a call of the objective: :func:`call_objective` (a raised exception is FAILED with its
  traceback, :class:`~torchtune_hp.trial.TrialPruned` is PRUNED);
* a reported value (``report()``, the callback, a stdout JSON line): :func:`as_number`; a
  ``metric_regex`` capture: :func:`parse_number`. What is not a number is skipped with a
  reason, never recorded; a non-finite report (NaN, inf: a diverging run) is kept by the
  study as the worst possible value.
* an outcome that crossed a file (a worker's ``result.json``): :meth:`Outcome.from_json`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torchtune_hp import signals
from torchtune_hp.trial import Interruption, TrialPruned, TrialState

MAX_DESCRIPTION = 80


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: COMPLETE with a finite ``value``, PRUNED (the study fills in its last
    report) or FAILED with ``error``; ``interruption`` when it was stopped from outside."""

    state: TrialState
    value: float | None = None
    error: str | None = None
    interruption: Interruption | None = None
    # the trial's process ended on this stop signal (SIGTERM, SIGINT, SIGHUP) from outside: if
    # the driver got one too, the trial is the study's stop, not a failure (executors/loop.py)
    stop_signal: int | None = None

    @classmethod
    def complete(cls, value: float) -> Outcome:
        return cls(TrialState.COMPLETE, value)

    @classmethod
    def pruned(cls) -> Outcome:
        return cls(TrialState.PRUNED)

    @classmethod
    def failed(cls, error: str, interruption: Interruption | None = None) -> Outcome:
        return cls(TrialState.FAILED, None, error, interruption)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "value": self.value,
            "error": self.error,
            "interruption": None if self.interruption is None else self.interruption.value,
        }

    @classmethod
    def from_json(cls, data: Any) -> Outcome:
        """An outcome read back from a file; anything malformed is FAILED, saying so."""
        try:
            state = TrialState(data["state"])
            if state is TrialState.COMPLETE:
                return outcome_of_return(data["value"], None)
            if state is TrialState.PRUNED:
                return cls.pruned()
            if state is TrialState.FAILED:
                error = data.get("error")
                return cls.failed(error if isinstance(error, str) else describe(error))
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        return cls.failed(f"the trial's result file holds no outcome: {describe(data)}")


def describe(value: Any) -> str:
    """A short, safe description of anything a trial produced, for a message."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 3] + "..."
    return text


class NotANumber(str):
    """A value reported in another process (a script's ``report()``) that was not a number
    there, as the reason it was not: :func:`as_number` passes the reason on instead of
    describing its text as a string."""

    MARK = "not_a_number"  # how report.jsonl carries it: {"<metric>": {"not_a_number": why}}


def as_number(value: Any) -> tuple[float | None, str | None]:
    """``(number, None)`` or ``(None, why not)``. Numbers, NumPy scalars, 0-d and one-element
    tensors and arrays are numbers; booleans, strings, None and containers are not."""
    if isinstance(value, NotANumber):
        return None, str(value)
    if value is None:
        return None, "None"
    if isinstance(value, bool):
        return None, f"a bool ({value})"
    if isinstance(value, (str, bytes)):
        return None, f"a {type(value).__name__} ({describe(value)}), not a number"
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float)):
        size = _size(value)
        if size is not None and size != 1:
            shape = tuple(getattr(value, "shape", ()))
            return None, (
                f"a {type(value).__name__} with {size} elements (shape {shape}), not one number"
            )
        try:
            value = item()
        except Exception as e:
            return None, f"a {type(value).__name__} that is not one number ({e})"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"a {type(value).__name__} element ({describe(value)}), not a number"
    if isinstance(value, int):
        try:
            return float(value), None
        except OverflowError:
            return None, f"an integer too large for a float ({len(str(abs(value)))} digits)"
    if isinstance(value, float):
        return value, None
    if isinstance(value, complex) or not hasattr(value, "__float__"):
        return None, f"a {type(value).__name__} ({describe(value)}), not a number"
    try:
        return float(value), None
    except Exception as e:
        return None, f"a {type(value).__name__} that is not a number ({e})"


def _size(value: Any) -> int | None:
    size = getattr(value, "size", None)
    if callable(size):  # torch: .numel(); .size() is the shape
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else None
    return size if isinstance(size, int) else None


def outcome_of_return(
    value: Any, metric: str | None, pruned: bool = False, source: str | None = None
) -> Outcome:
    """What an objective's return value means. ``metric`` picks the value out of a mapping.
    Never raises: a value that cannot even be looked at is a FAILED trial, saying why.
    ``source``: where a script's value was read (its printed metric, ...), for the messages;
    None for a function's return value."""
    if pruned:
        return Outcome.pruned()
    try:
        if isinstance(value, Mapping) and metric is not None:
            if metric not in value:
                keys = sorted(map(str, value))
                what = "the objective returned" if source is None else f"{source} has"
                return Outcome.failed(f"{what} keys {keys}, not the metric {metric!r}")
            value = value[metric]
        number, why = as_number(value)
    except Exception as e:
        what = "the objective returned" if source is None else f"{source} is"
        return Outcome.failed(
            f"{what} a {type(value).__name__} that could not be read: {type(e).__name__}: {e}"
        )
    if number is None:
        if source is not None:
            why = (why or "").removesuffix(", not a number")
            return Outcome.failed(f"{source} is not a number: {why}")
        return Outcome.failed(f"the objective must return a number, got {why}")
    if not math.isfinite(number):
        if source is not None:
            return Outcome.failed(f"{source} was {number} (the run diverged)")
        return Outcome.failed(f"the objective returned {number}")
    return Outcome.complete(number)


def called_exit(code: object, where: str = "") -> str:
    """Why a trial whose objective called ``sys.exit(code)`` failed (``where``: e.g. " in its
    worker process"): one wording for every executor of a recipe."""
    return f"the objective called sys.exit({code!r}){where} instead of returning a value"


def call_objective(call: Callable[[], Any], metric: str, trial: Any) -> Outcome:
    """Run an objective and say how its trial ended. An exception fails the trial with its
    traceback. What ends the program is not a trial's failure: ``sys.exit()`` (yours, or a
    signal handler's) and Ctrl-C go on to the driver loop, which records the trial as
    interrupted; so does a stop that a library caught and turned into an exception."""
    try:
        value = call()
    except TrialPruned:
        return Outcome.pruned()
    except Exception:
        stop = signals.received()
        if stop is not None:
            raise signals.Interrupted(stop) from None
        return Outcome.failed(traceback.format_exc())
    return outcome_of_return(value, metric, pruned=bool(getattr(trial, "pruned", False)))


def parse_number(text: str) -> float | None:
    """A number written as text (a ``metric_regex`` capture); None when it is not one."""
    try:
        return float(text.strip())
    except (ValueError, TypeError, AttributeError):
        return None

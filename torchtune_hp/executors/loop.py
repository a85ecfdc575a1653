"""The driver loop every executor runs under, and its one interrupt policy.

Keep ``executor.capacity`` trials running: ask the study for the next trial (the sampler sees
the running ones as pending), submit it, record each trial that ends, until the study holds
``n_trials`` finished trials, the sampler is exhausted, or ``timeout`` seconds have passed since
the loop started (then no trial starts, and the running ones end as they would: Optuna's
``timeout``, so no trial's compute is thrown away at the deadline).

Stops: Ctrl-C, SIGTERM and SIGHUP (see :mod:`torchtune_hp.signals`) stop every running trial,
record them FAILED (interrupted: ``stopped``, their parameters run again on the next run) and
re-raise. Any other error of the driver's own (a full disk, a bug) stops the trials the same way
and records them ``died`` (run again once), then re-raises. A further signal during that
cleanup is noted, not raised, so the records are always written.

Fail fast: when the study's first ``fail_fast`` trials all fail with the same error (a typo in
the command, a missing module), or trials cannot even be started several times in a row, the
study stops with :class:`~torchtune_hp.errors.StudyStopped` instead of spending its whole
budget on the same failure.
"""

from __future__ import annotations

import contextlib
import operator
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torchtune_hp import durations, signals
from torchtune_hp.display import headline
from torchtune_hp.errors import ClusterGone, StudyStopped, TimeLimitReached
from torchtune_hp.executors import Executor, Finished
from torchtune_hp.samplers import SpaceExhausted
from torchtune_hp.signals import Interrupted, shielded, stop_signals
from torchtune_hp.trial import FrozenTrial, Interruption, TrialState

POLL_S = 0.05
# how often the loop marks its running trials alive (Study.heartbeat): a dead driver's trial
# that never reported ends within this of when it was last known to run, not at its start
HEARTBEAT_S = 5.0
# how long a trial that ended on a stop signal waits for the driver's own (see _not_stopped)
STOP_GRACE_S = 1.0


def error_signature(trial: FrozenTrial) -> str:
    """The last line of a failure (``ModuleNotFoundError: No module named 'x'``), not a
    progress bar drawn after it (two failures behind the same bar are not one error)."""
    return headline(trial.error)


# a number in an error's last line: the trial's own parameter values, sizes, line numbers,
# object addresses
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def error_kind(trial: FrozenTrial) -> str:
    """:func:`error_signature` with the trial's own parameter values and every number
    blanked: the same mistake fails every trial with its own values in its message
    (``unrecognized arguments: --model.momentum=0.968``, ``--model.opt=adam``), and it is
    still the same mistake."""
    line = error_signature(trial)
    for value in sorted({str(v) for v in trial.params.values()}, key=len, reverse=True):
        if value:
            line = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "#", line)
    return _NUMBER.sub("#", line)


class FailFast:
    """Watches the study's first trials: ``n`` FAILED in a row with the same error and none
    COMPLETE or PRUNED before them means the next one will fail too. Trials that could not
    even start (they do not count toward ``n_trials``) stop the study after ``n`` in a row
    (3 when ``n`` is 0) at any point, or it would start them for ever."""

    def __init__(self, study: Any, n: int) -> None:
        self.n = n
        self.armed = n > 0 and not any(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials
        )
        self.same: list[FrozenTrial] = []
        self.not_started: list[FrozenTrial] = []

    def check_all(self, finished: list[FrozenTrial]) -> None:
        """The trials that ended together: one that succeeded shows the setup works."""
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in finished):
            self.armed = False
        for trial in finished:
            self.check(trial)

    def check(self, trial: FrozenTrial) -> None:
        if trial.interruption is Interruption.NOT_STARTED:
            self.not_started.append(trial)
            if len(self.not_started) >= (self.n or 3):
                self._stop("could not start", self.not_started)
            return
        self.not_started = []
        if not self.armed or trial.interrupted:
            return
        if trial.state is not TrialState.FAILED:
            self.armed = False
            return
        if self.same and error_kind(self.same[0]) != error_kind(trial):
            self.same = []
        self.same.append(trial)
        if len(self.same) >= self.n:
            self._stop("all failed with the same error", self.same)

    def _stop(self, what: str, trials: list[FrozenTrial]) -> None:
        numbers = [t.number for t in trials]
        raise StudyStopped(
            f"trials {numbers} {what}, so the study stopped instead of going on: "
            f"{error_signature(trials[-1])}"
        )


@contextlib.contextmanager
def _horizon(sampler: Any, n_trials: int) -> Iterator[None]:
    """Tell a sampler that plans for a total (see ``Sampler``) the study's ``n_trials`` while
    this loop runs; asks after it (plain ask/tell) have no known total again."""
    plans = hasattr(sampler, "horizon")
    if plans:
        sampler.horizon = n_trials
    try:
        yield
    finally:
        if plans:
            sampler.horizon = None


@contextlib.contextmanager
def _looping(study: Any) -> Iterator[None]:
    """Marks the study as running its loop: a second loop started from within the first (an
    objective calling ``optimize``) would count the inner loop's trials toward the outer's
    total and share its stop and its time limit."""
    study._looping = True
    try:
        yield
    finally:
        study._looping = False


def run_trials(
    study: Any,
    executor: Executor,
    n_trials: int,
    callbacks: Sequence[Callable[[Any, FrozenTrial], None]] = (),
    fail_fast: int = 3,
    timeout: object = None,
) -> None:
    """``timeout``: anything :func:`~torchtune_hp.durations.seconds` takes, or None."""
    what = "n_trials must be an integer >= 0 (the study's total, earlier runs' trials included)"
    try:
        if isinstance(n_trials, bool):
            raise TypeError
        n_trials = operator.index(n_trials)  # numpy's integers too
    except TypeError:
        raise TypeError(f"{what}, got {n_trials!r}") from None
    if n_trials < 0:
        raise ValueError(f"{what}, got {n_trials!r}")
    try:
        limit = None if timeout is None else (time.monotonic(), durations.seconds(timeout))
    except ValueError as e:
        raise ValueError(f"timeout: {e}") from None
    if study.follower:  # a DDP rank > 0 follows rank 0's trials, whose clock is the one
        limit = None
    if getattr(study, "_looping", False):  # optimize() from inside its own objective
        raise RuntimeError(
            f"study {study.name!r} is already running its trials (optimize() or a run was "
            "called from inside its own objective or callback): one loop per study at a time"
        )
    fail = FailFast(study, fail_fast)
    signals.reset()
    with stop_signals(), _horizon(study.sampler, n_trials), _looping(study):
        try:
            study.loop_state("running")  # in here: a failing write must not leave it running
            _drive(study, executor, n_trials, callbacks, fail, limit)
        except BaseException as e:
            stop = signals.received()
            error = e if stop is None or isinstance(e, KeyboardInterrupt) else Interrupted(stop)
            if isinstance(error, KeyboardInterrupt):  # a library may have turned it into
                signals.begin_stop()  # something else (Lightning: sys.exit(1)): still a stop
            with shielded():
                _stop(study, executor, error)
            if error is e:
                raise
            raise error from None
        finally:
            with shielded(), contextlib.suppress(Exception):  # a hint for followers only: it
                study.loop_state("ended")  # must not replace the error that ended the loop


def _drive(
    study: Any,
    executor: Executor,
    n_trials: int,
    callbacks: Sequence[Callable[[Any, FrozenTrial], None]],
    fail: FailFast,
    limit: tuple[float, float] | None = None,
) -> None:
    """``limit``: when the loop started and its time limit in seconds, or None."""
    exhausted = timed_out = False
    beat = time.monotonic()
    while True:
        if limit is not None and not timed_out and time.monotonic() - limit[0] >= limit[1]:
            timed_out = True
            _say_timed_out(study, n_trials, executor.active, limit[1])
        while (
            not (exhausted or timed_out)
            and executor.active < executor.capacity
            and (study.follower or study.n_finished + executor.active < n_trials)
        ):
            try:
                trial = study.ask()
            except SpaceExhausted as e:
                exhausted = True
                _say_exhausted(study, n_trials, executor.active, e)
                break
            executor.submit(trial)
        if executor.active == 0:
            return
        with signals.defer():  # what finished is recorded whole before a stop is acted on
            done = _not_stopped(executor.wait(POLL_S))
            finished = [study.tell(d.trial, d.outcome) for d in done]
        for frozen in finished:
            for cb in callbacks:
                cb(study, frozen)
        fail.check_all(finished)
        if time.monotonic() - beat >= HEARTBEAT_S:
            if executor.active:  # an in-process trial has ended by now: nothing runs
                study.heartbeat()
            beat = time.monotonic()
        stop = signals.received()
        if stop is not None:  # the objective (or a library) caught the stop and returned
            raise Interrupted(stop)


def _say_timed_out(study: Any, n_trials: int, running: int, limit_s: float) -> None:
    """Why a study ends short of ``n_trials``: a warning, which the command line shows as
    one line and a script can catch or filter."""
    if study.follower or study.n_finished + running >= n_trials:
        return  # nothing more would have started anyway
    wait = (
        f"; waiting for the {running} running trial(s) to end (none is cut off: a recipe's "
        "objective.timeout stops a trial that runs too long)"
        if running
        else ""
    )
    warnings.warn(
        f"study {study.name!r}: its time limit ({durations.shown(limit_s)}) passed with "
        f"{study.n_finished} of {n_trials} trials finished, so no new trial starts{wait}; run "
        "it again to go on (the limit counts from each run's start)",
        TimeLimitReached,
        stacklevel=4,
    )


def _say_exhausted(study: Any, n_trials: int, running: int, why: SpaceExhausted) -> None:
    """Why a study ends short of ``n_trials`` with nothing left to try (a grid smaller than
    the budget): it would otherwise end as a finished one does, at 4 of 10."""
    if study.follower:
        return
    warnings.warn(
        f"study {study.name!r}: {why}, so it ends with {study.n_finished + running} of "
        f"{n_trials} trials",
        UserWarning,
        stacklevel=4,
    )


def _not_stopped(done: list[Finished], grace_s: float = STOP_GRACE_S) -> list[Finished]:
    """``done`` less the trials whose process ended on a stop signal while the driver got one
    too (within :data:`STOP_GRACE_S`: Slurm's scancel, a preemption or ``systemctl stop``
    signal every process at once, in no set order). Those stay RUNNING for :func:`_stop`,
    which records them interrupted and queues them to run again, as it does the trials it
    stops itself; they did not fail. A signal for the trial alone (a user's ``kill``) is that
    trial's failure."""
    if not any(d.outcome.stop_signal is not None for d in done):
        return done
    deadline = time.monotonic() + grace_s
    while signals.received() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the handler runs between these: defer() only holds the raise
    if signals.received() is None:
        return done
    return [d for d in done if d.outcome.stop_signal is None]


def _stop(study: Any, executor: Executor, error: BaseException) -> None:
    """Stop every trial, then record them: ``stopped`` after a signal or a fail-fast stop,
    ``died`` after an error of the driver's own."""
    try:
        # what ended before the stop, as it ended (no wait: a signal stop is known already)
        for done in _not_stopped(executor.wait(0.0), grace_s=0.0):
            study.tell(done.trial, done.outcome)
    except Exception:
        pass
    try:
        executor.stop_all()
        try:  # what was found ended by itself while it was being stopped (a Ray host's trial;
            # one ended by the stop signal itself stays to be recorded interrupted below)
            for done in _not_stopped(executor.wait(0.0), grace_s=0.0):
                study.tell(done.trial, done.outcome)
        except Exception:
            pass
    finally:
        if isinstance(error, KeyboardInterrupt):
            how = error.args[0] if error.args else "KeyboardInterrupt"
            kind, reason = Interruption.STOPPED, f"interrupted by the user ({how})"
        elif isinstance(error, StudyStopped):
            kind, reason = Interruption.STOPPED, "interrupted: the study stopped on failures"
        elif isinstance(error, ClusterGone):  # not the trial's doing: it runs again
            kind, reason = Interruption.STOPPED, "interrupted: the Ray cluster is gone"
        elif isinstance(error, SystemExit):  # the program chose to end (sys.exit)
            kind, reason = Interruption.STOPPED, f"interrupted: sys.exit({error.code!r})"
        else:
            kind = Interruption.DIED
            reason = f"interrupted: the driver stopped on an error: {type(error).__name__}: {error}"
        try:
            study.interrupted(reason, kind)
        except Exception:  # e.g. the disk is full: the next run records them as died
            pass

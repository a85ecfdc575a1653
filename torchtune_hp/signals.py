"""Every stop signal is a clean stop: SIGTERM (``kill``, Docker, Slurm, systemd) and SIGHUP (a
closed terminal) are handled as Ctrl-C is: the driver stops its trials, records them FAILED
(interrupted) and exits with 128 + the signal's number.

A stop raises :class:`Interrupted` where the driver happens to be, and is also *remembered*:
libraries that catch ``KeyboardInterrupt`` and turn it into something else (Lightning's trainer
turns it into ``sys.exit(1)``) cannot make the study mistake a stop for a failed trial, because
the driver loop asks :func:`received` before it records anything as a failure.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
ALL_STOPS = (signal.SIGINT, *STOP_SIGNALS)


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised where the driver happens to be, exactly like Ctrl-C's
    ``KeyboardInterrupt`` (which it is a kind of)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


class _State:
    received: int | None = None  # the first stop signal of this run
    stopping = False  # a stop is being handled: further signals are noted, not raised
    deferred: list[int] | None = None  # inside defer(): signals wait until the block ends


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.received is None:
        _State.received = signum
    if _State.stopping:
        return
    if _State.deferred is not None:
        _State.deferred.append(signum)
        return
    raise Interrupted(signum)


def stopped_by(signum: int) -> NoReturn:
    """A stop signal that a library's own handler caught (Ray's, while ``ray.init`` runs,
    turns SIGTERM into ``sys.exit(15)``): remembered and raised as ours would have."""
    if _State.received is None:
        _State.received = signum
    raise Interrupted(signum)


def received() -> int | None:
    """The stop signal that arrived since :func:`reset`, if any, even if whatever it raised
    was caught and turned into something else on the way."""
    return _State.received


def reset() -> None:
    _State.received = None
    _State.stopping = False


def begin_stop() -> None:
    """A stop is being handled: from now on stop signals are ignored (by these handlers), so a
    second Ctrl-C cannot cut the cleanup short."""
    _State.stopping = True


def ignore_from_now_on() -> None:
    """The program is ending: ignore stop signals in the kernel, so one that arrives while the
    interpreter shuts down (when Python's own handlers are gone) cannot replace its exit code."""
    for sig in ALL_STOPS:
        signal.signal(sig, signal.SIG_IGN)


def in_force() -> bool:
    """Whether a stop signal reaches this module's handlers (or is ignored, as one the program
    was started ignoring): False where the program installed a policy of its own, under which
    a ``sys.exit()`` may be its stop."""
    return all(signal.getsignal(sig) in (_handler, signal.SIG_IGN) for sig in ALL_STOPS)


def install() -> None:
    """For a whole program (the command line): every stop signal raises :class:`Interrupted`,
    except one the program was started ignoring (``nohup`` ignores SIGHUP; a shell script's
    background job, SIGINT): that stays ignored."""
    for sig in ALL_STOPS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)


@contextmanager
def stop_signals() -> Iterator[None]:
    """While the block runs (main thread only), stop signals raise :class:`Interrupted` and are
    remembered; handlers somebody else installed are left alone. The old ones come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in ALL_STOPS:
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            old[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def defer() -> Iterator[None]:
    """Stop signals that arrive during the block (recording what finished) are raised when it
    ends, so a record is never cut in half. Works with this module's handlers installed."""
    if _State.deferred is not None:
        yield
        return
    _State.deferred = []
    try:
        yield
    finally:
        pending, _State.deferred = _State.deferred, None
    if pending and not _State.stopping:
        raise Interrupted(pending[0])


@contextmanager
def shielded() -> Iterator[None]:
    """While the driver cleans up after a stop, further Ctrl-C or stop signals are noted, not
    raised, so the cleanup that records the trials cannot itself be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in ALL_STOPS:
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: None)
        except (ValueError, OSError):
            continue
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)

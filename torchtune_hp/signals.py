"""Every stop signal is a clean stop: SIGTERM (``kill``, Docker, Slurm, systemd) and SIGHUP (a
closed terminal) are handled as Ctrl-C is: the driver stops its trials, records them FAILED
(interrupted) and exits with 128 + the signal's number."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised where the driver happens to be, exactly like Ctrl-C's
    ``KeyboardInterrupt`` (which it is a kind of)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


_stopping = [False]  # set once a stop is being handled: further signals are not raised


def _raise(signum: int, frame: FrameType | None) -> None:
    if not _stopping[0]:
        raise Interrupted(signum)


def begin_stop() -> None:
    """A stop is being handled: from now on stop signals (from these handlers) are ignored, so
    a second Ctrl-C cannot cut the cleanup, or the exit after it, short."""
    _stopping[0] = True


def ignore_from_now_on() -> None:
    """The program is ending after a stop: ignore stop signals in the kernel, so one that
    arrives while the interpreter shuts down (when Python's own handlers are gone) does not
    kill it and replace its exit code."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)


def reset() -> None:
    _stopping[0] = False


def install() -> None:
    """For a whole program (the command line): Ctrl-C, SIGTERM and SIGHUP raise
    :class:`Interrupted` from now on (once; see :func:`begin_stop`)."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, _raise)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` while the block runs (main thread only,
    and only where nobody else installed a handler), then the old handlers come back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def shielded() -> Iterator[list[int]]:
    """While the driver cleans up after a stop, further Ctrl-C or stop signals are noted, not
    raised, so the cleanup that records the trials cannot itself be cut short."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    old = {}
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: noted.append(signum))
        except (ValueError, OSError):
            continue
    try:
        yield noted
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)

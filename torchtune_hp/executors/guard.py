"""The guard of one trial process: it dies with the driver, taking the trial with it.

Run as ``python -S guard.py <fd> <grace> <argv...>`` (by path, no torchtune_hp import, and only
modules built into the interpreter: it starts in milliseconds). The driver starts it as the
leader of a new process group; it starts the trial's command in that group and waits. ``fd`` is
the read end of a pipe whose write end only the driver holds: when the driver dies, however it
dies (kill -9 included), the pipe reads end-of-file, and the guard SIGTERMs the whole group (the
command, its DDP ranks, its data loader workers), SIGKILLs it after ``grace`` seconds, and is
gone with it. No trial process outlives its driver, and no resumed driver finds an old trial
still training on its GPU.

The guard itself ignores the SIGTERM the driver sends the group to stop a trial (a timeout, a
prune, Ctrl-C): the command gets it and ends, and the guard exits as the command did (its exit
code, or the same signal), so the driver sees the command's own end. One exception: a command
that catches a stop signal and exits with a code of its own (Lightning turns SIGTERM into exit
0, after training stopped half-way) is not taken at its word when the signal reached the guard
too (a stop sent to every process: Slurm's scancel, ``systemctl stop``). The guard then exits
128 + the signal's number, as a shell reports a command killed by it, and says why on stderr, so
a run cut short is never recorded as one that finished. Only a signal from outside the group
counts: the guard holds the stop signals and reads each one's sender (``sigwaitinfo``), so a
script that ends its own helpers with ``killpg(0, SIGTERM)`` and then finishes is not taken
for a stopped one.

What leaves the group is found too (Linux): the guard is its trial's subreaper, so a process
that starts a session of its own (``setsid()``, a daemon's double fork) and is orphaned becomes
the guard's child, not init's. Once the command has ended, the guard ends every such process
(SIGTERM to it and its own group, SIGKILL after ``grace`` seconds) before it exits: a trial
leaves nothing running, as its group's processes leave nothing.
"""

import _thread
import os
import signal
import sys
import time

CANNOT_START = "torchtune_hp: cannot start"
CAUGHT_STOP = "torchtune_hp: the command exited with code"  # starts the line said below
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _adopt_strays() -> None:
    """Become the subreaper of the trial's processes (Linux; elsewhere nothing changes)."""
    try:
        import ctypes  # a few milliseconds, and only here

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


def _strays() -> list:
    """The guard's children that still run: adopted orphans, once the command is reaped."""
    me, found = os.getpid(), []
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: not Linux, and nothing was adopted
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        state, ppid = stat[stat.rfind(b")") + 2 :].split()[:2]  # after "pid (comm) "
        if int(ppid) == me and state != b"Z":
            found.append(int(name))
    return found


def _reap() -> None:
    """Collect every ended child (adopted orphans become the guard's zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _send(pids: list, sig: int) -> None:
    """``sig`` to each process, and to its group where it leads one (it left ours for it)."""
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except OSError:  # ended meanwhile
            pass


def _end_strays(grace: float) -> None:
    """End what the trial left running outside its group: SIGTERM, SIGKILL after ``grace``
    seconds; what is orphaned meanwhile (their own children) is ended in the next round."""
    for _ in range(10):
        _reap()
        strays = _strays()
        if not strays:
            return
        _send(strays, signal.SIGTERM)
        until = time.monotonic() + grace
        while strays and time.monotonic() < until:
            time.sleep(0.05)
            _reap()
            alive = _strays()
            strays = [p for p in strays if p in alive]
        _send(strays, signal.SIGKILL)
        time.sleep(0.05)


def _watch(fd: int, grace: float, gone: list) -> None:
    while os.read(fd, 1):
        pass  # the driver writes nothing; anything read is ignored
    gone.append(True)
    os.killpg(0, signal.SIGTERM)
    _send(_strays(), signal.SIGTERM)
    time.sleep(grace)
    _send(_strays(), signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)  # the guard too: the driver is gone


def _listen(command: int, stops: list, busy: list, reaped: list) -> None:
    """Note each stop signal sent to the group from outside it (the driver, scancel's
    slurmstepd, systemd, a user's ``kill -TERM -<group>``); one that a process of the group
    sent (the trial ending its own helpers) is the trial's business. ``busy`` is non-empty
    while a signal taken is being noted. A stop from anyone but the driver is passed on to
    the command: sent to the guard alone (``kill $(pgrep -f train.py)`` finds the guard
    first, its command line holds the script's), it would otherwise not stop the trial and
    still mark its finished run as cut short; sent to the whole group, the command gets it
    twice, as it does when the driver then stops the group."""
    group, driver = os.getpgrp(), os.getppid()
    while True:
        info = signal.sigwaitinfo(set(STOPS))
        busy.append(info.si_signo)
        try:
            inside = info.si_pid > 0 and os.getpgid(info.si_pid) == group
        except OSError:  # the sender is gone already
            inside = False
        if not inside:
            stops.append(info.si_signo)
            if info.si_pid != driver and not reaped:  # a reaped pid may be another's
                try:
                    os.kill(command, info.si_signo)
                except OSError:  # it has ended
                    pass
        busy.pop()


def main() -> int:
    fd, grace, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    os.set_inheritable(fd, False)  # the command need not hold the pipe
    # the stop signals wait for _listen in every thread of the guard (threads inherit this)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    _adopt_strays()
    try:
        # the command gets every signal's default and none held; Python ignores SIGPIPE and
        # SIGXFSZ, and subprocess gives them back too
        restore = [getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n)]
        pid = os.posix_spawnp(
            argv[0], argv, os.environ, setsigmask=(), setsigdef=[*restore, *STOPS]
        )
    except OSError as e:
        print(f"{CANNOT_START} {argv[0]!r}: {e}", file=sys.stderr, flush=True)
        return 127
    stops: list = []  # the stop signals from outside the group, first first
    busy: list = []
    gone: list = []
    reaped: list = []
    _thread.start_new_thread(_listen, (pid, stops, busy, reaped))
    _thread.start_new_thread(_watch, (fd, grace, gone))
    _, status = os.waitpid(pid, 0)
    reaped.append(True)
    rc = os.waitstatus_to_exitcode(status)
    _end_strays(grace)
    # a stop that reached the group as the command ended is noted before the end is judged
    until = time.monotonic() + 1.0
    while (busy or set(STOPS) & signal.sigpending()) and time.monotonic() < until:
        time.sleep(0.001)
    if gone:  # the driver died and the command has ended: nothing of it may stay
        os.killpg(0, signal.SIGKILL)
    if rc < 0:  # ended by a signal: end the same way, so the driver sees what the command saw
        sig = -rc
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        # to this thread alone, so _listen cannot take a stop signal, then let through
        signal.pthread_kill(_thread.get_ident(), sig)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    if stops:  # the command caught the stop and exited by itself: it did not finish its run
        name = signal.Signals(stops[0]).name
        print(
            f"{CAUGHT_STOP} {rc} after {name} reached the trial's "
            "processes: recorded as ended by the signal",
            file=sys.stderr,
            flush=True,
        )
        return 128 + stops[0]
    return rc


if __name__ == "__main__":
    sys.exit(main())

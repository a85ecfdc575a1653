"""One trial running as a process on this machine: how it is started, heard, stopped and judged.

Used by the local pool (:mod:`~torchtune_hp.executors.pool`, the driver's own machine) and by
the Ray executor's node side (:mod:`~torchtune_hp.executors.ray_node`, any machine of a
cluster), so a trial's argv, environment, reporting ways, stop rules and outcome are the same
wherever it runs. Nothing here touches the study: reports come out of :meth:`TrialProcess.
reports`, the pruner's answer goes in through :meth:`TrialProcess.answer`.

The trial runs as its own process group led by a guard (:mod:`~torchtune_hp.executors.guard`)
that ends the group when the process holding ``watch_fd``'s write end dies, so a timeout, a
prune, a stop or the death of whoever launched it (the driver, a Ray actor) ends the whole tree.

How a finished process becomes an outcome (:func:`process_outcome`), first match wins: the
worker's ``result.json``; a timeout or a prune that reached it; a command that could not start;
a non-zero exit, or any exit after the script caught a stop signal (FAILED, stderr tail
stored); the last JSON line on stdout holding the metric; the last reported value; the last
value of the metric's tag in the TensorBoard files the trial wrote; else FAILED, naming the
metric and what was seen. Every value goes through :mod:`torchtune_hp.outcome`.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchtune_hp import files, signals
from torchtune_hp.board.tags import objective_tag
from torchtune_hp.errors import UnsafePath
from torchtune_hp.executors import channel, guard
from torchtune_hp.executors.argv import build_argv, lightning_cli_extras
from torchtune_hp.executors.metric import (
    MISSING,
    closest_lines,
    json_keys,
    last_json_value,
    regex_capture,
    regex_value,
    tensorboard_last,
)
from torchtune_hp.executors.remote import resume_from_env, waits_for_answers
from torchtune_hp.outcome import Outcome, as_number, describe, outcome_of_return
from torchtune_hp.trial import Interruption, first_step, unreported

PRUNE_GRACE_S = 10.0  # a pruned trial that reports through files may stop by itself first
# a trial's note when the pruner said stop too late to stop it (a busy driver read its last
# reports after it had ended, or it outran the kill): it is judged as it ended
MISSED_STOP = (
    "the pruner's stop came after it had ended by itself: it ran to its end, and it is "
    "recorded as it ended"
)
STDERR_TAIL = 3000
STDOUT_TAIL = 4 << 20  # where a script's last JSON line and its metric lines are looked for


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for each trial, as plain data (it travels to Ray nodes): the command with
    ``python`` already made the driver's interpreter and the files beside the recipe made
    absolute (see :mod:`torchtune_hp.launch`), how parameters are added (``style`` None: not
    at all, as for the function worker), extra environment, the stdout regex, the timeout."""

    command: list[str]
    recipe_dir: Path
    style: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    regex: Any = None  # a compiled pattern
    timeout_s: float | None = None
    python: str = sys.executable  # the interpreter a leading ``python`` was made into
    # folders put first on the trial's PYTHONPATH, before whatever it has where it runs
    python_path: tuple[str, ...] = ()

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """A trial process's environment: ``env`` with :attr:`python_path` put first."""
        out = dict(env)
        if self.python_path:
            rest = [out["PYTHONPATH"]] if out.get("PYTHONPATH") else []
            out["PYTHONPATH"] = os.pathsep.join([*self.python_path, *rest])
        return out

    @property
    def run_outputs(self) -> tuple[str, ...]:
        """What a run writes into the trial's folder that a later run of the same (paused)
        trial must not find: LightningCLI's ``config.yaml``, whose SaveConfigCallback refuses
        to start where one exists, which failed every resumed ``lightning_cli`` trial."""
        return ("config.yaml",) if self.style == "lightning_cli" else ()

    def argv(self, params: Mapping[str, Any], run_dir: Path, resuming: bool) -> list[str]:
        """The trial's command line (``resuming``: a paused trial run again)."""
        if self.style is None:
            return list(self.command)
        args = build_argv(self.command, params, self.style, self.rename)
        if self.style != "lightning_cli":
            return args
        fits = "fit" in self.command  # LightningCLI's subcommand that trains
        return args + lightning_cli_extras(run_dir, resuming and fits, self.command)

    def start(
        self,
        params: Mapping[str, Any],
        run_dir: Path,
        env: Mapping[str, str],
        launch: str,
        metric: str,
        watch_fd: int,
        grace_s: float,
    ) -> TrialProcess:
        """Launch a trial of this spec in ``run_dir`` (the driver's pool and a Ray host)."""
        return TrialProcess(
            self.argv(params, run_dir, resume_from_env(env) is not None),
            env,
            run_dir,
            launch,
            metric,
            watch_fd,
            grace_s,
            self.regex,
            self.timeout_s,
            self.run_outputs,
        )

    def moved(self, recipe_dir: Path, python: str) -> LaunchSpec:
        """The same launch on a machine where the recipe's folder arrived as ``recipe_dir`` and
        the interpreter is ``python`` (a Ray node: its working_dir and its worker's python).
        Paths under the old folder move with it, but for one that did not arrive (Ray ships
        no file that a ``.gitignore`` or ``.rayignore`` there names) while the old folder is
        here too (a one-machine cluster, a shared file system): it is read where it is.
        Nothing else changes."""
        old = str(self.recipe_dir)

        def move(text: str) -> str:
            if text == old or text.startswith(old + os.sep):
                there = str(recipe_dir) + text[len(old) :]
                if os.path.lexists(there) or not os.path.lexists(text):
                    return there
            return text

        command = [move(e) for e in self.command]
        if command and command[0] == self.python:
            command[0] = python
        env = {k: move(v) for k, v in self.env.items()}
        path = tuple(move(p) for p in self.python_path)
        return replace(
            self, command=command, recipe_dir=recipe_dir, env=env, python=python, python_path=path
        )


@dataclass(frozen=True)
class Report:
    """A value of the study's metric the trial reported: ``seq`` is set for reports through
    ``report.jsonl`` (the trial waits for the answer), None for a stdout ``metric_regex``
    match (the script waits for nothing: a prune stops it at once)."""

    seq: int | None
    step: Any
    value: Any


def read_tail(path: Path, tail: int) -> str:
    """The last ``tail`` bytes of a log of the trial's (a script may write gigabytes), or
    nothing when the trial removed or replaced it."""
    try:
        with open(path, "rb") as f:
            return _tail_of(f.fileno(), tail)
    except OSError:
        return ""


def _tail_of(fd: int, tail: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, tail, max(0, size - tail)).decode(errors="replace")


def _write_back(fd: int, path: Path) -> None:
    """A log deleted while its trial ran (its folder removed: a cleanup script, ``rm -r`` of
    the study) written again at ``path`` from the file the driver holds, so it is there to
    read; nothing is written where something else stands now."""
    if os.path.lexists(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with files.open_new(path) as out:
        while chunk := os.pread(fd, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)


@dataclass(frozen=True)
class Logs:
    """The ends of a finished trial's stdout and stderr, read from the files the driver held
    (whatever happened to them at their paths)."""

    stdout: str
    stderr: str


def keep_earlier_logs(run_dir: Path, outputs: Sequence[str] = ()) -> None:
    """A paused trial run again writes new logs: its earlier run's are renamed aside
    (``stdout.log.stale-<time>``), never appended to or overwritten; so are the ``outputs``
    that the launch writes once per run (see :attr:`LaunchSpec.run_outputs`)."""
    for name in ("stdout.log", "stderr.log", *outputs):
        files.set_aside(run_dir / name)


class TrialProcess:
    """A launched trial: ``argv`` run in ``run_dir`` with ``env``, stdout and stderr in
    ``stdout.log`` and ``stderr.log``, its reports read from ``report.jsonl`` and (with
    ``regex``) from stdout lines."""

    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        run_dir: Path,
        launch: str,
        metric: str,
        watch_fd: int,
        grace_s: float,
        regex: Any = None,
        timeout_s: float | None = None,
        run_outputs: Sequence[str] = (),
    ) -> None:
        self.run_dir = run_dir
        self.launch = launch
        self.regex = regex
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        files.write_text(run_dir / "command.json", json.dumps(argv))
        keep_earlier_logs(run_dir, run_outputs)
        self._files = [  # readable: the driver reads them through these, deleted or not
            files.open_new(run_dir / "stdout.log", readable=True),
            files.open_new(run_dir / "stderr.log", readable=True),
        ]
        self.logs: Logs | None = None  # once it ended
        self._reports = channel.ReportReader(run_dir, launch, metric)
        self._reports.hold()  # before the trial starts: nothing it reports can be missed
        guarded = [sys.executable, "-S", guard.__file__, str(watch_fd), str(grace_s)]
        self.started = time.time()
        try:
            self.proc = subprocess.Popen(
                [*guarded, *argv],
                cwd=run_dir,
                env=dict(env),
                stdout=self._files[0],
                stderr=self._files[1],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
                pass_fds=(watch_fd,),
            )
        except Exception:
            self._close_files()
            raise
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._stdout = channel.LineTail(run_dir / "stdout.log", self._files[0].fileno())
        self.problems: list[str] = []  # notes for the trial (lines that were not reports)
        self.n_regex = first_step(resume_from_env(env))  # the step its next match is
        self._sent: dict[int, float] = {}  # when each report awaiting an answer was written
        self._waits = waits_for_answers(env)
        self.regex_skipped = False
        self.pruned = False  # the pruner said stop while it ran
        self._heard_stop = False  # ... where the script reads its verdicts
        self.stop_at: float | None = None  # when to SIGTERM (a pruned trial's grace)
        self.killed_for: str | None = None
        self.kill_at: float | None = None  # when to SIGKILL
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- hearing it ----------------------------------------------------------------------------
    def reports(self) -> list[Report]:
        """The reports of the metric since the last call, in the order they were made."""
        out = []
        for r in self._reports.new():
            out.append(Report(r.seq, r.step, r.value))
            if r.sent is not None and self._waits:
                self._sent[r.seq] = r.sent
        self.problems += self._reports.problems
        self._reports.problems.clear()
        reader = self._reports
        if self.returncode is not None and reader.other_keys and not reader.metric_seen:
            self.problems.append(unreported(reader.metric, reader.other_keys))
            reader.other_keys = set()  # said once
        if self.regex is None:
            return out
        # the last line without its newline: once the script has ended by itself (a line cut
        # by a kill may be a number cut short, 0.1 of 0.1834)
        ended = self.returncode is not None and self.ended_by_itself
        for text in self._stdout.all_new_lines(final=ended):
            for match in self.regex.finditer(text):
                value = regex_value(match)
                if value is None:
                    if not self.regex_skipped:
                        self.regex_skipped = True
                        self.problems.append(
                            "stdout lines that matched metric_regex with no number were skipped "
                            f"(first: {describe(regex_capture(match))} in {describe(text)})"
                        )
                    continue
                out.append(Report(None, self.n_regex, value))
                self.n_regex += 1
        return out

    def answer(self, report: Report, prune: bool) -> None:
        """The pruner's verdict on ``report``: written for a trial that waits for it; a pruned
        trial gets ``PRUNE_GRACE_S`` to stop by itself, a regex-reporting one none. Whether
        it still runs is seen before the verdict is written: a script that reads a stop and
        exits at once has heard it, however long the driver takes to look again."""
        ended = prune and not self.pruned and self._has_ended()
        if report.seq is not None:
            channel.write_verdict(self.run_dir, self.launch, report.seq, prune)
            sent = self._sent.pop(report.seq, None)
            if sent is not None and self.deadline is not None:  # the wait is over: add it
                self.deadline += max(0.0, time.time() - sent)
        if not prune or self.pruned:  # a later stop changes nothing: the first one counts
            return
        if ended:
            self._missed_stop()  # it had ended by itself: nothing heard the stop
            return
        self.pruned = True
        self._heard_stop = report.seq is not None
        self.stop_at = time.monotonic() + PRUNE_GRACE_S
        if report.seq is None:
            self.stop_at = time.monotonic()  # nothing in the script listens: stop it now

    def _has_ended(self) -> bool:
        """Whether the process has ended; if so it is ended here and now, as :meth:`poll`
        would (its group's leftovers killed at once, while its id cannot be anyone else's)."""
        if self.returncode is None and self.proc.poll() is not None:
            self.end()
        return self.returncode is not None

    @property
    def stopped_by_pruner(self) -> bool:
        """The pruner's stop reached it: told while it ran, where it reads its verdicts, or
        killed for it. One said after it had ended, or one a script that prints its reports
        outran (it ended by itself before the kill), leaves it as it ended: a run that trained
        to its end is not PRUNED because a busy driver read its last reports late."""
        return self.pruned and (self._heard_stop or self.killed_for == "pruned")

    def _missed_stop(self) -> None:
        if MISSED_STOP not in self.problems:
            self.problems.append(MISSED_STOP)

    # -- stopping it ---------------------------------------------------------------------------
    def poll(self) -> int | None:
        """The exit code once the process has ended (its group's leftovers killed), else None
        after applying the timeout, a prune's grace and the kill escalation."""
        if self.returncode is not None:
            return self.returncode
        now = time.monotonic()
        rc = self.proc.poll()
        if rc is None:
            # the timeout's clock stops while a report waits for the driver's answer (a busy
            # driver, a Ray node's round trip): that time is the driver's, not the trial's
            waited = time.time() - min(self._sent.values()) if self._sent else 0.0
            if (
                self.deadline is not None
                and now > self.deadline + max(0.0, waited)
                and self.killed_for is None
            ):
                # a worker that had left its result when the time ran out is done, only
                # exiting: its result stands; any other is stopped for the timeout, and a
                # result it writes after that (SIGTERM ignored, within the grace) does not
                done = channel.read_result(self.run_dir, self.launch) is not None
                self.terminate("ended" if done else "timeout")
            elif self.pruned and self.stop_at is not None and now >= self.stop_at:
                self.terminate("pruned")
            if self.kill_at is not None and now > self.kill_at:
                self._kill(signal.SIGKILL)
            return None
        self.end()
        return self.returncode

    @property
    def ended_by_itself(self) -> bool:
        """No kill of ours ended it, or only one sent once its result was left (a worker that
        had returned when its time ran out): what it wrote and returned is its own."""
        return self.killed_for in (None, "ended")

    def terminate(self, why: str) -> None:
        if self.killed_for is None:
            self.killed_for = why
            self.kill_at = time.monotonic() + self.grace_s
            self._kill(signal.SIGTERM)

    def end(self, grace_s: float = 0.0) -> None:
        """Wait up to ``grace_s`` for the process, then kill its whole group (once: after
        that the group's id may belong to someone else)."""
        if self.returncode is not None:
            return
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._kill(signal.SIGKILL)
            self.proc.wait()
        self._kill(signal.SIGKILL)  # anything the trial left behind in its group
        self.returncode = self.proc.returncode
        if self.pruned and self.killed_for is None and not self.stopped_by_pruner:
            self._missed_stop()  # a printing script that ended before its kill
        try:
            out, err = (f.fileno() for f in self._files)
            self.logs = Logs(_tail_of(out, STDOUT_TAIL), _tail_of(err, STDERR_TAIL))
            for f, name in zip(self._files, ("stdout.log", "stderr.log"), strict=True):
                _write_back(f.fileno(), self.run_dir / name)
        except (OSError, UnsafePath):
            pass  # a full disk, a link planted there: its outcome is read from what is there
        finally:
            self._close_files()

    def _kill(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        tail = getattr(self, "_stdout", None)  # none when the process could not start
        if tail is not None:  # the rest is read at its path, where end() wrote it back
            tail.fd = None


def stop_together(trials: list[TrialProcess], grace_s: float) -> None:
    """SIGTERM every trial's group, then SIGKILL what is left after one shared grace."""
    for t in trials:
        t.terminate("interrupted")
    deadline = time.monotonic() + grace_s
    for t in trials:
        t.end(max(0.0, deadline - time.monotonic()))


def _signal_name(number: int) -> str | None:
    """``SIGSEGV`` for 11; a real-time signal by its description; None for no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        try:
            return signal.strsignal(number)
        except ValueError:
            return None


def process_outcome(
    run_dir: Path,
    launch: str,
    rc: int,
    metric: str,
    *,
    killed_for: str | None,
    pruned: bool,
    timeout_s: float | None,
    started: float,
    last_reported: Any = MISSING,
    regex: Any = None,
    logs: Logs | None = None,
) -> Outcome:
    """How the trial that ran in ``run_dir`` ended (the rules of the module docstring).
    ``last_reported``: the study's value at the trial's last reported step, if any;
    ``logs``: its logs' ends as the driver read them (else they are read in ``run_dir``)."""
    stderr = logs.stderr if logs else read_tail(run_dir / "stderr.log", STDERR_TAIL)
    result = channel.read_result(run_dir, launch)
    if result is not None and killed_for != "timeout":  # it finished in its time
        return result
    if killed_for == "timeout":
        # the reason last, where the trials table shows an error's last line; without the
        # guard's line on the stop it passed on (ours: the timeout's, not the script's)
        lines = [line for line in stderr.splitlines() if not line.startswith(guard.CAUGHT_STOP)]
        said = "".join(f"{line}\n" for line in lines)
        said = f"stderr before it:\n{said}" if said.strip() else ""
        return Outcome.failed(f"{said}timed out after {timeout_s:g} s (killed)")
    if pruned:
        return Outcome.pruned()
    if rc == 127 and stderr.startswith(guard.CANNOT_START):
        return Outcome.failed(stderr.strip(), Interruption.NOT_STARTED)
    caught = channel.read_stopped(run_dir, launch)
    if rc != 0 or caught is not None:
        # ended by a stop signal, by a shell or launcher that passed one on as 128 + its
        # number, or by its own exit after catching one (the guard or the trial said so): the
        # loop's _not_stopped decides whether it was the study's stop
        stop = caught or next((s for s in signals.ALL_STOPS if rc in (-s, 128 + s)), None)
        name = _signal_name(-rc) if rc < 0 else None
        code = f"{rc} ({name})" if name else rc
        if caught is not None and rc >= 0:
            code = f"{code} after {_signal_name(caught)}, caught by the script (a run cut short)"
        said = f"stderr:\n{stderr}" if stderr.strip() else "nothing on stderr"
        return replace(Outcome.failed(f"exit code {code}; {said}"), stop_signal=stop)
    stdout = logs.stdout if logs else read_tail(run_dir / "stdout.log", STDOUT_TAIL)
    value = last_json_value(stdout, metric)
    if value is not MISSING:
        return outcome_of_return(value, metric, source=f"the {metric!r} it printed last")
    if last_reported is not MISSING:
        reported, _ = as_number(last_reported)
        if reported is not None and not math.isfinite(reported):  # kept as the worst value
            said = (
                f"the {metric!r} it printed last (metric_regex) was NaN or inf"
                if regex is not None
                else f"its last report of {metric!r} was NaN or inf"
            )
            ending = "" if regex is not None else ", and it printed no final value"
            return Outcome.failed(f"{said} (the run diverged){ending}")
        return outcome_of_return(last_reported, metric, source=f"its last report of {metric!r}")
    value, tags = tensorboard_last(run_dir, metric, since=started)
    if value is not None:
        source = f"the last {metric!r} in its TensorBoard files"
        return outcome_of_return(value, metric, source=source)
    ours = {objective_tag(metric)}
    seen = [
        f"TensorBoard tags {[t for t in tags if t not in ours]}",
        f"stdout JSON keys {json_keys(stdout)}",
    ]
    size = _size(run_dir / "stdout.log")
    if size > STDOUT_TAIL:  # a metric printed before a flood of output is not seen
        seen.append(
            f"only the last {STDOUT_TAIL >> 20} MiB of its {size / 2**20:.1f} MiB stdout were "
            "read (print the metric last)"
        )
    if regex is None:
        # `val_loss=0.12` or `val_loss: 0.12`, as a line or inside a progress bar's postfix
        named = re.findall(
            rf"(?<![\w.]){re.escape(metric)}[\"']?\s*[:=]\s*[-+]?(?:[\d.]+(?:[eE][-+]?\d+)?|nan|inf)",
            stdout,
        )
        if named:
            seen.append(
                f"stdout names it as {named[-1]!r}, not as JSON: print a JSON line "
                f'({{"{metric}": ...}}) or give objective.metric_regex'
            )
    if last_json_value(stderr, metric) is not MISSING:
        seen.append(f"a JSON line with {metric!r} on stderr, where the metric is not read")
    if regex is not None:
        near = closest_lines(stdout, regex.pattern, metric)
        on_stderr = [m.group(0) for m in regex.finditer(stderr)]
        seen.append(
            f"no stdout line matched metric_regex {regex.pattern!r}"
            + (f"; the closest lines: {near}" if near else "")
            + (
                f"; it matches {len(on_stderr)} on stderr, where it is not read (Python's "
                f"logging writes there), the last {on_stderr[-1]!r}: print the metric"
                if on_stderr
                else ""
            )
        )
    said = f"stderr:\n{stderr.rstrip()}\n" if stderr.strip() else ""  # its own word first
    return Outcome.failed(
        f"{said}the script never reported the metric {metric!r}; seen: " + ", ".join(seen)
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

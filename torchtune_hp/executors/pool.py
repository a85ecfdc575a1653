"""Run trials as processes on this machine, several at once: the subprocess executor.

Each trial runs as its own process group, led by a guard (:mod:`torchtune_hp.executors.guard`)
that ends the group if the driver dies, so a timeout, a prune, Ctrl-C or kill -9 of the driver
stops the whole tree (DDP ranks, data loader workers) and leaves no orphans. The study records
each group, so a resumed driver makes sure an old one is gone before it runs anything.

While the loop waits (every 50 ms) the pool reads each trial's reports (``report.jsonl``, stdout
regex matches), hands them to the study, asks the pruner and answers; a pruned trial that does
not stop by itself gets SIGTERM (at once when it reports through stdout only).

How a finished process becomes an outcome, first match wins: a timeout or a prune; a command
that could not start; the worker's ``result.json``; a non-zero exit (FAILED, stderr tail
stored); the last JSON line on stdout holding the metric; the last reported value; the last
value of the metric's tag in the TensorBoard files the trial wrote; else FAILED, naming the
metric and what was seen. Every value goes through :mod:`torchtune_hp.outcome`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torchtune_hp import files, procs
from torchtune_hp.board.tags import objective_tag
from torchtune_hp.errors import UnsafePath
from torchtune_hp.executors import Finished, channel, guard
from torchtune_hp.executors.devices import Slot, thread_env
from torchtune_hp.executors.metric import (
    MISSING,
    closest_lines,
    json_keys,
    last_json_value,
    regex_capture,
    regex_value,
    tensorboard_last,
)
from torchtune_hp.executors.remote import (
    ENV_LAUNCH,
    ENV_METRIC,
    ENV_MODE,
    ENV_PARAMS,
    ENV_STUDY,
    ENV_TRIAL,
    ENV_TRIAL_DIR,
)
from torchtune_hp.outcome import Outcome, describe, outcome_of_return
from torchtune_hp.trial import Interruption, Trial

POLL_S = 0.05
PRUNE_GRACE_S = 10.0  # a pruned trial that reports through files may stop by itself first
STDERR_TAIL = 3000
STDOUT_TAIL = 4 << 20  # where a script's last JSON line and its metric lines are looked for


@dataclass
class LaunchSpec:
    """What to run for a trial: ``argv(params, run_dir)``, extra environment, the stdout regex
    and the per-trial timeout."""

    argv: Callable[[Mapping[str, Any], Path], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    regex: Any = None  # a compiled pattern
    timeout_s: float | None = None


@dataclass
class _Running:
    trial: Trial
    proc: subprocess.Popen
    run_dir: Path
    slot: int
    launch: str
    started: float  # wall-clock time of the launch
    files: list[IO[bytes]]
    deadline: float | None
    reports: channel.ReportReader
    stdout: channel.LineTail
    n_regex: int = 0
    pruned: bool = False
    stop_at: float | None = None  # when to SIGTERM (a pruned trial's grace)
    killed_for: str | None = None
    kill_at: float | None = None  # when to SIGKILL
    regex_skipped: bool = False


def _read(path: Path, tail: int) -> str:
    """The last ``tail`` bytes of a log of the trial's (a script may write gigabytes), or
    nothing when the trial removed or replaced it."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _kill(r: _Running, sig: int) -> None:
    try:
        os.killpg(r.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessPool:
    """The :class:`~torchtune_hp.executors.Executor` of local processes: ``workers`` at once,
    each in a device ``slot`` (its ``CUDA_VISIBLE_DEVICES``)."""

    def __init__(
        self,
        study: Any,
        spec: LaunchSpec,
        workers: int,
        slots: Sequence[Slot] = (),
        grace_s: float = procs.KILL_GRACE_S,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.study = study
        self.spec = spec
        self.slots = list(slots) or [Slot((), "")] * workers
        self.capacity = min(workers, len(self.slots))
        self.grace_s = grace_s
        self.running: dict[int, _Running] = {}
        self._done: list[Finished] = []
        # The guards watch the read end; only this process holds the write end (not inherited
        # by anything it starts), so it closes, and they act, when this process dies.
        self._watch_r, self._watch_w = os.pipe()

    @property
    def active(self) -> int:
        return len(self.running) + len(self._done)

    # -- launching ---------------------------------------------------------------------------
    def _env(self, trial: Trial, run_dir: Path, launch: str, slot: Slot) -> dict[str, str]:
        return {
            **os.environ,
            **self.spec.env,
            ENV_TRIAL: str(trial.number),
            ENV_TRIAL_DIR: str(run_dir),
            ENV_STUDY: self.study.name,
            ENV_METRIC: self.study.metric,
            ENV_MODE: self.study.mode,
            ENV_PARAMS: json.dumps(trial.params),
            ENV_LAUNCH: launch,
            **thread_env(self.capacity),
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": slot.visible,
        }

    def submit(self, trial: Trial) -> None:
        busy = {r.slot for r in self.running.values()}
        slot = next(i for i in range(len(self.slots)) if i not in busy)
        try:
            self.running[trial.number] = self._launch(trial, slot)
        except OSError as e:
            error = f"cannot start: {e}"
            self._done.append(Finished(trial, Outcome.failed(error, Interruption.NOT_STARTED)))

    def _launch(self, trial: Trial, slot: int) -> _Running:
        run_dir = self.study.trial_dir(trial.number)
        launch = secrets.token_hex(8)
        argv = self.spec.argv(trial.params, run_dir)
        files.write_text(run_dir / "command.json", json.dumps(argv))
        out = files.open_new(run_dir / "stdout.log")
        err = files.open_new(run_dir / "stderr.log")
        guarded = [sys.executable, "-S", guard.__file__, str(self._watch_r), str(self.grace_s)]
        started = time.time()
        try:
            proc = subprocess.Popen(
                [*guarded, *argv],
                cwd=run_dir,
                env=self._env(trial, run_dir, launch, self.slots[slot]),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
                pass_fds=(self._watch_r,),
            )
        except Exception:
            out.close()
            err.close()
            raise
        self.study.record_process(trial, procs.record(proc.pid))
        timeout = self.spec.timeout_s
        return _Running(
            trial,
            proc,
            run_dir,
            slot,
            launch,
            started,
            [out, err],
            None if timeout is None else time.monotonic() + timeout,
            channel.ReportReader(run_dir, launch, self.study.metric),
            channel.LineTail(run_dir / "stdout.log"),
        )

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> list[Finished]:
        if not self._done and timeout_s > 0:
            time.sleep(timeout_s)
        for number in list(self.running):
            r = self.running[number]
            try:
                outcome = self._poll(r)
            except (OSError, ValueError, RecursionError, UnsafePath) as e:
                # what the trial did to its own folder (deleted a log, put a folder where its
                # report file goes, planted a link) ends that trial, never the study
                outcome = Outcome.failed(
                    f"its output could not be read: {type(e).__name__}: {describe(e)}"
                )
                self._end(r)
            if outcome is not None:
                self.running.pop(number)
                self._done.append(Finished(r.trial, outcome))
        done, self._done = self._done, []
        return done

    def stop_all(self) -> None:
        """SIGTERM every running trial's process group, SIGKILL what is left after a grace."""
        for r in self.running.values():
            self._terminate(r, "interrupted")
        deadline = time.monotonic() + self.grace_s
        for r in self.running.values():
            self._end(r, max(0.0, deadline - time.monotonic()))
        self.running.clear()

    def _end(self, r: _Running, grace_s: float = 0.0) -> None:
        """Wait up to ``grace_s`` for a trial's process, then kill its whole group."""
        try:
            r.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill(r, signal.SIGKILL)
            r.proc.wait()
        _kill(r, signal.SIGKILL)  # anything the trial left behind in its group
        for f in r.files:
            f.close()

    def close(self) -> None:
        for fd in (self._watch_r, self._watch_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _terminate(self, r: _Running, why: str) -> None:
        if r.killed_for is None:
            r.killed_for = why
            r.kill_at = time.monotonic() + self.grace_s
            _kill(r, signal.SIGTERM)

    # -- one trial ---------------------------------------------------------------------------
    def _report(self, r: _Running, value: Any, step: Any) -> bool:
        self.study.report(r.trial, value, step)
        prune = self.study.should_prune(r.trial)
        if prune and not r.pruned:
            r.pruned = True
            r.stop_at = time.monotonic() + PRUNE_GRACE_S
        return prune

    def _read_reports(self, r: _Running) -> None:
        for report in r.reports.new():
            prune = self._report(r, report.value, report.step)
            channel.write_verdict(r.run_dir, r.launch, report.seq, prune)
        while r.reports.problems:
            self.study.note(r.trial.number, r.reports.problems.pop(0))
        if self.spec.regex is None:
            return
        for text in r.stdout.new_lines():
            for match in self.spec.regex.finditer(text):
                value = regex_value(match)
                if value is None:
                    if not r.regex_skipped:
                        r.regex_skipped = True
                        self.study.note(
                            r.trial.number,
                            "stdout lines that matched metric_regex with no number were skipped "
                            f"(first: {describe(regex_capture(match))} in {describe(text)})",
                        )
                    continue
                if self._report(r, value, r.n_regex):
                    r.stop_at = time.monotonic()  # nothing in the script listens: stop it now
                r.n_regex += 1

    def _poll(self, r: _Running) -> Outcome | None:
        self._read_reports(r)
        now = time.monotonic()
        rc = r.proc.poll()
        if rc is None:
            if r.deadline is not None and now > r.deadline:
                self._terminate(r, "timeout")
            elif r.pruned and r.stop_at is not None and now >= r.stop_at:
                self._terminate(r, "pruned")
            if r.kill_at is not None and now > r.kill_at:
                _kill(r, signal.SIGKILL)
            return None
        self._end(r)  # the group's leftovers (e.g. dataloader workers)
        self._read_reports(r)
        return self._outcome(r, rc)

    def _outcome(self, r: _Running, rc: int) -> Outcome:
        metric = self.study.metric
        stderr = _read(r.run_dir / "stderr.log", STDERR_TAIL)
        if r.killed_for == "timeout":
            return Outcome.failed(f"timed out after {self.spec.timeout_s:g} s (killed)\n{stderr}")
        if r.pruned:
            return Outcome.pruned()
        if rc == 127 and stderr.startswith(guard.CANNOT_START):
            return Outcome.failed(stderr.strip(), Interruption.NOT_STARTED)
        result = channel.read_result(r.run_dir, r.launch)
        if result is not None:
            return result
        if rc != 0:
            return Outcome.failed(f"exit code {rc}; stderr:\n{stderr}")
        stdout = _read(r.run_dir / "stdout.log", STDOUT_TAIL)
        value = last_json_value(stdout, metric)
        if value is not MISSING:
            return outcome_of_return(value, metric)
        steps = self.study.trial(r.trial.number).intermediate
        if steps:
            return outcome_of_return(steps[max(steps)], metric)
        value, tags = tensorboard_last(r.run_dir, metric, since=r.started)
        if value is not None:
            return outcome_of_return(value, metric)
        ours = {objective_tag(metric)}
        seen = [
            f"TensorBoard tags {[t for t in tags if t not in ours]}",
            f"stdout JSON keys {json_keys(stdout)}",
        ]
        if self.spec.regex is not None:
            pattern = self.spec.regex.pattern
            near = closest_lines(stdout, pattern, metric)
            seen.append(
                f"no stdout line matched metric_regex {pattern!r}"
                + (f"; the closest lines: {near}" if near else "")
            )
        return Outcome.failed(
            f"the script never reported the metric {metric!r}; seen: " + ", ".join(seen)
        )

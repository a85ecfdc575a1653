"""Run trials as processes on this machine, several at once: the local executor.

Each trial is a :class:`~torchtune_hp.executors.process.TrialProcess` (its own process group,
led by a guard that ends it if the driver dies), so a timeout, a prune, Ctrl-C or kill -9 of the
driver stops the whole tree (DDP ranks, data loader workers) and leaves no orphans. The study
records each group, so a resumed driver makes sure an old one is gone before it runs anything.

While the loop waits (every 50 ms) the pool reads each trial's reports (``report.jsonl``, stdout
regex matches), hands them to the study, asks the pruner and answers at once. How a finished
process becomes an outcome: :func:`~torchtune_hp.executors.process.process_outcome`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchtune_hp import procs, signals
from torchtune_hp.errors import UnsafePath
from torchtune_hp.executors import Finished
from torchtune_hp.executors.devices import Slot, thread_env
from torchtune_hp.executors.metric import MISSING
from torchtune_hp.executors.process import (
    MISSED_STOP,
    LaunchSpec,
    Report,
    TrialProcess,
    process_outcome,
    stop_together,
)
from torchtune_hp.executors.remote import (
    ENV_LAUNCH,
    ENV_METRIC,
    ENV_MODE,
    ENV_PARAMS,
    ENV_PAUSES,
    ENV_PRUNER,
    ENV_RESUME_FROM,
    ENV_STUDY,
    ENV_TRIAL,
    ENV_TRIAL_DIR,
)
from torchtune_hp.outcome import Outcome, describe
from torchtune_hp.trial import Interruption, Trial

POLL_S = 0.05


def trial_env(study: Any, trial: Trial, launch: str) -> dict[str, str]:
    """Who a launched trial is, for its environment (see :mod:`.remote`); its folder
    (``TORCHTUNE_HP_TRIAL_DIR``), devices and threads are the executor's to add."""
    env = {
        ENV_TRIAL: str(trial.number),
        ENV_STUDY: study.name,
        ENV_METRIC: study.metric,
        ENV_MODE: study.mode,
        ENV_PARAMS: json.dumps(trial.params),
        ENV_LAUNCH: launch,
        ENV_PRUNER: getattr(study.pruner, "name", ""),  # "none": reports wait for no answer
        "PYTHONUNBUFFERED": "1",
    }
    if trial.pauses:
        env[ENV_PAUSES] = "1"
    if trial.resume_from is not None:
        env[ENV_RESUME_FROM] = str(trial.resume_from)
    return env


def last_reported(study: Any, number: int) -> Any:
    """The study's value at the trial's last reported step (an outcome's fallback)."""
    steps = study.trial(number).intermediate
    return steps[max(steps)] if steps else MISSING


# After a stop signal, how long one call still forwards a trial's reports (some thousands).
STOP_FORWARD_S = 0.5


def forward_reports(
    study: Any,
    trial: Trial,
    reports: list[Report],
    answer: Callable[[Report, bool], None],
) -> list[Report]:
    """Hand a trial's new reports to the study, and each its pruner's verdict. Returns those
    left when a stop signal came and this call has forwarded for :data:`STOP_FORWARD_S`
    already, so that a backlog of many thousand reports (a regex on every line) never holds
    a stop back, while a trial that ended just before the stop, its few last reports still
    unread, keeps its result. A trial whose reports were not all forwarded has no outcome
    yet (its last one would be taken for its final value)."""
    until = time.monotonic() + STOP_FORWARD_S
    for i, report in enumerate(reports):
        if signals.received() is not None and time.monotonic() > until:
            return reports[i:]
        study.report(trial, report.value, report.step)
        if report.seq is None and trial.resume_from is not None:
            # read by metric_regex: the script hears no verdict, is stopped at any point,
            # and so saves its state every epoch; a stop keeps every line it printed
            study.saved_at(trial, report.step)
        answer(report, study.should_prune(trial))
    return []


def forward_notes(study: Any, number: int, problems: list[str]) -> None:
    """A trial's notes from its process: warnings too, but for the pruner's missed stop (a
    pruner's reason: nothing went wrong)."""
    while problems:
        problem = problems.pop(0)
        study.note(number, problem, warn=problem != MISSED_STOP)


@dataclass
class _Running:
    trial: Trial
    proc: TrialProcess
    slot: int
    backlog: list[Report] = field(default_factory=list)  # read, not yet forwarded (a stop)


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

    def submit(self, trial: Trial) -> None:
        busy = {r.slot for r in self.running.values()}
        slot = next(i for i in range(len(self.slots)) if i not in busy)
        run_dir = self.study.trial_dir(trial.number)
        launch = secrets.token_hex(8)
        env = self.spec.environment(
            {
                **os.environ,
                **self.spec.env,
                **trial_env(self.study, trial, launch),
                ENV_TRIAL_DIR: str(run_dir),
                **thread_env(self.capacity),
                "CUDA_VISIBLE_DEVICES": self.slots[slot].visible,
            }
        )
        try:
            proc = self.spec.start(
                trial.params, run_dir, env, launch, self.study.metric, self._watch_r, self.grace_s
            )
        except OSError as e:
            error = f"cannot start: {e}"
            self._done.append(Finished(trial, Outcome.failed(error, Interruption.NOT_STARTED)))
            return
        self.study.record_process(trial, procs.record(proc.pid))
        self.running[trial.number] = _Running(trial, proc, slot)

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
                r.proc.end()
            if outcome is not None:
                self.running.pop(number)
                self._done.append(Finished(r.trial, outcome))
        done, self._done = self._done, []
        return done

    def _poll(self, r: _Running) -> Outcome | None:
        p = r.proc
        r.backlog = forward_reports(self.study, r.trial, r.backlog + p.reports(), p.answer)
        rc = p.poll()
        if rc is not None and not r.backlog:
            r.backlog = forward_reports(self.study, r.trial, p.reports(), p.answer)
        forward_notes(self.study, r.trial.number, p.problems)
        if rc is None or r.backlog:  # a stop cut its reports short: no outcome yet
            return None
        return process_outcome(
            p.run_dir,
            p.launch,
            rc,
            self.study.metric,
            killed_for=p.killed_for,
            pruned=p.stopped_by_pruner,
            timeout_s=p.timeout_s,
            started=p.started,
            last_reported=last_reported(self.study, r.trial.number),
            regex=p.regex,
            logs=p.logs,
        )

    def stop_all(self) -> None:
        """SIGTERM every running trial's process group, SIGKILL what is left after a grace."""
        stop_together([r.proc for r in self.running.values()], self.grace_s)
        self.running.clear()

    def close(self) -> None:
        for fd in (self._watch_r, self._watch_w):
            try:
                os.close(fd)
            except OSError:
                pass

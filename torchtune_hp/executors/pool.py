"""Run trials as processes, several at once: the subprocess executor.

The driver (this loop) alone writes the database. It keeps up to ``workers`` trials running;
when one ends the next starts at once (asynchronous, no batches), and the sampler is asked with
the running trials as pending, so parallel trials never get the same point. Every 50 ms it
reads each trial's reports (``report.jsonl``, stdout regex matches), asks the pruner and
answers; a pruned trial that does not stop by itself gets SIGTERM (at once when it reports
through stdout only). Each trial runs in its own process group, so a timeout or Ctrl-C stops
the whole tree (DDP children, dataloader workers) and leaves no orphans.

How a finished process becomes a result, first match wins: a timeout or a prune; the worker's
``result.json``; a non-zero exit (FAILED, stderr tail stored); the last JSON line on stdout
holding the metric; the last reported value; the last value of the metric's tag in the
TensorBoard files under the trial's folder; else FAILED, naming the metric and what was seen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torchtune_hp.executors import channel
from torchtune_hp.executors.devices import threads_per_worker
from torchtune_hp.executors.metric import (
    json_keys,
    last_json_value,
    regex_value,
    tensorboard_last,
)
from torchtune_hp.remote import (
    ENV_METRIC,
    ENV_MODE,
    ENV_PARAMS,
    ENV_STUDY,
    ENV_TRIAL,
    ENV_TRIAL_DIR,
)
from torchtune_hp.samplers import SpaceExhausted
from torchtune_hp.trial import FrozenTrial, Trial

POLL_S = 0.05
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
PRUNE_GRACE_S = 10.0  # a pruned trial that reports through files may stop by itself first
STDERR_TAIL = 3000


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
    files: list[IO[bytes]]
    deadline: float | None
    reports: channel.ReportReader
    stdout: channel.LineTail
    last_report: float | None = None
    n_regex: int = 0
    pruned: bool = False
    stop_at: float | None = None  # when to SIGTERM (a pruned trial's grace)
    killed_for: str | None = None
    kill_at: float | None = None  # when to SIGKILL


def _kill(r: _Running, sig: int) -> None:
    try:
        os.killpg(r.proc.pid, sig)
    except ProcessLookupError:
        pass


def _terminate(r: _Running, why: str) -> None:
    if r.killed_for is None:
        r.killed_for = why
        r.kill_at = time.monotonic() + KILL_GRACE_S
        _kill(r, signal.SIGTERM)


class ProcessPool:
    def __init__(
        self,
        study: Any,
        spec: LaunchSpec,
        workers: int,
        slots: Sequence[str | None],
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.study = study
        self.spec = spec
        self.slots = list(slots) if slots else [None] * workers
        if workers > len(self.slots):
            warnings.warn(
                f"executor.workers={workers}, but the devices give {len(self.slots)} slots "
                f"(raise trials_per_device to share a device): running {len(self.slots)} at once",
                stacklevel=2,
            )
        self.workers = min(workers, len(self.slots))
        self.running: dict[int, _Running] = {}

    # -- launching ---------------------------------------------------------------------------
    def _env(self, trial: Trial, run_dir: Path, slot: str | None) -> dict[str, str]:
        threads = str(threads_per_worker(self.workers))
        env = {
            **os.environ,
            **self.spec.env,
            ENV_TRIAL: str(trial.number),
            ENV_TRIAL_DIR: str(run_dir),
            ENV_STUDY: self.study.name,
            ENV_METRIC: self.study.metric,
            ENV_MODE: self.study.mode,
            ENV_PARAMS: json.dumps(trial.params),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
        }
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        return env

    def _launch(self, trial: Trial, slot: int) -> _Running:
        run_dir = self.study.trial_dir(trial.number)
        run_dir.mkdir(parents=True, exist_ok=True)
        out = open(run_dir / "stdout.log", "wb")
        err = open(run_dir / "stderr.log", "wb")
        try:
            argv = self.spec.argv(trial.params, run_dir)
            (run_dir / "command.json").write_text(json.dumps(argv))
            proc = subprocess.Popen(
                argv,
                cwd=run_dir,
                env=self._env(trial, run_dir, self.slots[slot]),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
            )
        except Exception:
            out.close()
            err.close()
            raise
        timeout = self.spec.timeout_s
        return _Running(
            trial,
            proc,
            run_dir,
            slot,
            [out, err],
            None if timeout is None else time.monotonic() + timeout,
            channel.ReportReader(run_dir),
            channel.LineTail(run_dir / "stdout.log"),
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        n_trials: int,
        on_start: Callable[[Trial], None] | None = None,
        callbacks: Sequence[Callable[[Any, FrozenTrial], None]] = (),
    ) -> None:
        finished = self.study.n_finished
        exhausted = False
        try:
            while True:
                free = sorted(set(range(len(self.slots))) - {r.slot for r in self.running.values()})
                while (
                    not exhausted
                    and free
                    and len(self.running) < self.workers
                    and finished + len(self.running) < n_trials
                ):
                    try:
                        trial = self.study.ask()
                    except SpaceExhausted:
                        exhausted = True
                        break
                    if on_start is not None:
                        on_start(trial)
                    try:
                        self.running[trial.number] = self._launch(trial, free.pop(0))
                    except OSError as e:  # the command does not exist, is not executable...
                        frozen = self.study.tell(trial, state="failed", error=f"cannot start: {e}")
                        finished += frozen.counts
                        for cb in callbacks:
                            cb(self.study, frozen)
                if not self.running:
                    return
                time.sleep(POLL_S)
                for number in list(self.running):
                    frozen = self._poll(self.running[number])
                    if frozen is not None:
                        del self.running[number]
                        finished += frozen.counts
                        for cb in callbacks:
                            cb(self.study, frozen)
        except BaseException:
            self.stop_all()
            raise

    def stop_all(self) -> None:
        """SIGTERM every running trial's process group, SIGKILL what is left after a grace."""
        for r in self.running.values():
            _terminate(r, "interrupted")
        deadline = time.monotonic() + KILL_GRACE_S
        for r in self.running.values():
            try:
                r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(r, signal.SIGKILL)
                r.proc.wait()
            _kill(r, signal.SIGKILL)  # anything the trial left behind in its group
            for f in r.files:
                f.close()
        self.running.clear()

    # -- one trial ---------------------------------------------------------------------------
    def _report(self, r: _Running, value: float, step: int) -> bool:
        self.study._report(r.trial, value, step)
        r.last_report = value
        prune = self.study._should_prune(r.trial)
        if prune and not r.pruned:
            r.pruned = True
            r.stop_at = time.monotonic() + PRUNE_GRACE_S
        return prune

    def _read_reports(self, r: _Running) -> None:
        metric = self.study.metric
        for line in r.reports.new():
            values = line.get("values", {})
            if metric in values:
                prune = self._report(r, float(values[metric]), int(line.get("step", 0)))
                channel.write_verdict(r.run_dir, int(line["seq"]), prune)
        if self.spec.regex is None:
            return
        for text in r.stdout.new_lines():
            for match in self.spec.regex.finditer(text):
                if self._report(r, regex_value(match), r.n_regex):
                    r.stop_at = time.monotonic()  # nothing in the script listens: stop it now
                r.n_regex += 1

    def _poll(self, r: _Running) -> FrozenTrial | None:
        self._read_reports(r)
        now = time.monotonic()
        rc = r.proc.poll()
        if rc is None:
            if r.deadline is not None and now > r.deadline:
                _terminate(r, "timeout")
            elif r.pruned and r.stop_at is not None and now >= r.stop_at:
                _terminate(r, "pruned")
            if r.kill_at is not None and now > r.kill_at:
                _kill(r, signal.SIGKILL)
            return None
        _kill(r, signal.SIGKILL)  # the group's leftovers (e.g. dataloader workers)
        for f in r.files:
            f.close()
        self._read_reports(r)
        return self._result(r, rc)

    def _result(self, r: _Running, rc: int) -> FrozenTrial:
        study, trial, metric = self.study, r.trial, self.study.metric
        stderr = (r.run_dir / "stderr.log").read_bytes()[-STDERR_TAIL:].decode(errors="replace")
        if r.killed_for == "timeout":
            error = f"timed out after {self.spec.timeout_s:g} s (killed)\n{stderr}"
            return study.tell(trial, state="failed", error=error)
        if r.pruned:
            return study.tell(trial, state="pruned")
        result_file = r.run_dir / channel.RESULT
        if result_file.exists():
            result = json.loads(result_file.read_text())
            if "value" in result:
                return study.tell(trial, result["value"])
            if result.get("pruned"):
                return study.tell(trial, state="pruned")
            return study.tell(trial, state="failed", error=result.get("error") or stderr)
        if rc != 0:
            return study.tell(trial, state="failed", error=f"exit code {rc}; stderr:\n{stderr}")
        stdout = (r.run_dir / "stdout.log").read_text(errors="replace")
        value = last_json_value(stdout, metric)
        if value is None:
            value = r.last_report
        tags: list[str] = []
        if value is None:
            value, tags = tensorboard_last(r.run_dir, metric)
        if value is None:
            seen = [f"TensorBoard tags {tags}", f"stdout JSON keys {json_keys(stdout)}"]
            if self.spec.regex is not None:
                seen.append(f"no stdout line matched metric_regex {self.spec.regex.pattern!r}")
            error = f"the script never reported the metric {metric!r}; seen: " + ", ".join(seen)
            return study.tell(trial, state="failed", error=error)
        return study.tell(trial, value)  # NaN or inf: FAILED, with the reason

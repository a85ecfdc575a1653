"""The Ray executor's node side: a Ray actor that runs the driver's trials on its node.

One :class:`TrialHost` per concurrent trial, placed by Ray with the trial's resources
(``executor.resources_per_trial``) and reused from trial to trial, so a trial costs a few
messages rather than a new Ray worker. It runs each trial as a
:class:`~torchtune_hp.executors.process.TrialProcess`, exactly as the local pool does (argv,
environment, ``report()``, stdout JSON, ``metric_regex``, TensorBoard tags), in a folder of its
own under the node's temporary folder, with ``CUDA_VISIBLE_DEVICES`` set to the GPUs Ray
assigned to the actor. The recipe's folder arrives as Ray's ``working_dir`` (the actor's current
folder), and the launch is moved onto it (:meth:`~torchtune_hp.executors.process.LaunchSpec.
moved`).

The driver polls (:meth:`TrialHost.poll`): reports of the metric, notes, what changed in the
trial's folder (:mod:`~torchtune_hp.executors.folder_sync`, every ``SYNC_EVERY_S`` while it runs
and all of it at the end) and, once everything is sent, the exit code. The pruner's verdicts
come back through :meth:`TrialHost.answer`. Nothing travels through shared files.

The actor holds the write end of the pipe its trials' guards watch: when the actor dies (its
node lost, the driver gone and Ray ending the job's actors, ``ray.kill``), every trial process
it started is ended with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torchtune_hp import procs
from torchtune_hp.board.tags import trial_run_name
from torchtune_hp.executors.devices import thread_env
from torchtune_hp.executors.folder_sync import BUDGET, Chunk, FolderSender
from torchtune_hp.executors.process import LaunchSpec, Report, TrialProcess, stop_together
from torchtune_hp.executors.remote import ENV_TRIAL_DIR

SYNC_EVERY_S = 2.0  # how fresh a running trial's folder is on the driver (plus one poll)


class TrialHost:
    """Runs one trial at a time on this node for the driver (see the module docstring)."""

    def __init__(self, spec: LaunchSpec, study: str, metric: str, cpus: float, grace_s: float):
        self.spec = spec.moved(Path.cwd(), sys.executable)
        self.study = study
        self.metric = metric
        self.cpus = cpus
        self.grace_s = grace_s
        self.base = Path(tempfile.mkdtemp(prefix="torchtune_hp-"))
        self.proc: TrialProcess | None = None
        self.sender: FolderSender | None = None
        self.synced = 0.0
        # the guards of this actor's trials watch the read end (see executors/guard.py)
        self._watch_r, self._watch_w = os.pipe()

    def where(self) -> dict[str, Any]:
        """Where this host runs: its node and the GPUs Ray gave it (also: it is up)."""
        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }

    def start(self, number: int, params: dict[str, Any], launch: str, env: dict[str, str]):
        """Start a trial (``env``: who it is, from the driver); returns its process record."""
        self._discard()
        run_dir = self.base / self.study / trial_run_name(number)
        run_dir.mkdir(parents=True)
        where = self.where()
        gpus = where["gpus"]
        proc_env = {
            **os.environ,
            **self.spec.env,
            **env,
            ENV_TRIAL_DIR: str(run_dir),
            **thread_env(1, self.cpus),
            "CUDA_VISIBLE_DEVICES": ",".join(gpus),
        }
        self.proc = TrialProcess(
            self.spec.argv(params, run_dir),
            proc_env,
            run_dir,
            launch,
            self.metric,
            self._watch_r,
            self.grace_s,
            self.spec.regex,
            self.spec.timeout_s,
        )
        self.sender = FolderSender(run_dir)
        self.synced = time.monotonic()
        return {**procs.record(self.proc.pid), "node": where["node"], "gpus": gpus}

    def poll(self) -> dict[str, Any]:
        """New reports and notes; the folder's changes when due; the end once all is sent."""
        proc, sender = self.proc, self.sender
        assert proc is not None and sender is not None
        reports = proc.reports()
        rc = proc.poll()
        if rc is not None:
            reports += proc.reports()
        chunks: list[Chunk] = []
        complete = False
        if rc is not None or time.monotonic() - self.synced >= SYNC_EVERY_S:
            chunks, complete = sender.changes(BUDGET)
            self.synced = time.monotonic()
        problems, proc.problems = proc.problems, []
        ended = rc is not None and complete
        out = {
            "reports": [(r.seq, r.step, r.value) for r in reports],
            "problems": problems,
            "chunks": chunks,
            "rc": rc if ended else None,
            "killed_for": proc.killed_for,
        }
        if ended:
            self._discard()
        return out

    def answer(self, seq: int | None, prune: bool) -> None:
        if self.proc is not None:
            self.proc.answer(Report(seq, None, None), prune)

    def stop(self) -> list[Chunk]:
        """End the running trial (SIGTERM, SIGKILL after the grace); what its folder still
        had to send, as far as one message holds it."""
        if self.proc is None or self.sender is None:
            return []
        stop_together([self.proc], self.grace_s)
        chunks, _ = self.sender.changes(BUDGET)
        self._discard()
        return chunks

    def close(self) -> None:
        """Before the driver lets the host go: nothing of it stays on the node."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _discard(self) -> None:
        """The finished trial's node-local folder: everything in it has reached the driver."""
        if self.proc is not None:
            self.proc.end()
            shutil.rmtree(self.proc.run_dir, ignore_errors=True)
        self.proc = self.sender = None

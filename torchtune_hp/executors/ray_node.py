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

import functools
import hashlib
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
PREFIX = "torchtune_hp-"  # a host's folder in the node's temporary folder
OWNER = "host.pid"  # in it: the host's pid and start time


@functools.lru_cache(maxsize=1)
def package_id() -> dict[str, str]:
    """The torchtune_hp this process runs: its version, where it is installed, and a digest
    of its source, so the driver can tell a node that runs another copy (an old install, a
    ``ray`` started from another environment) from one that runs the same code elsewhere."""
    import torchtune_hp

    root = Path(torchtune_hp.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {"version": torchtune_hp.__version__, "path": str(root), "digest": digest.hexdigest()}


def clear_stale(tmp: Path) -> None:
    """Remove the folders of hosts that died without cleaning up (killed with their node's
    raylet or their driver): a node must not fill up with dead trials' checkpoints."""
    for folder in tmp.glob(PREFIX + "*"):
        try:
            pid, ticks = (folder / OWNER).read_text().split()
            alive = str(procs.start_ticks(int(pid))) == ticks
        except (OSError, ValueError):
            continue  # not ours, or being created
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


def _news(
    proc: TrialProcess | None, reports: list[Report], chunks: list[Chunk], rc: int | None
) -> dict[str, Any]:
    """What a host tells the driver (``poll``, ``stop``): reports, notes (taken from ``proc``),
    folder changes, and the exit code once the trial's end is to be heard."""
    problems: list[str] = []
    if proc is not None:
        problems, proc.problems = proc.problems, []
    return {
        "reports": [(r.seq, r.step, r.value) for r in reports],
        "problems": problems,
        "chunks": chunks,
        "rc": rc,
        "killed_for": None if proc is None else proc.killed_for,
        "pruned": proc is not None and proc.stopped_by_pruner,  # the stop reached it there
    }


class TrialHost:
    """Runs one trial at a time on this node for the driver (see the module docstring)."""

    def __init__(self, spec: LaunchSpec, study: str, metric: str, cpus: float, grace_s: float):
        self.spec = spec.moved(Path.cwd(), sys.executable)
        self.study = study
        self.metric = metric
        self.cpus = cpus
        self.grace_s = grace_s
        clear_stale(Path(tempfile.gettempdir()))
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.base / OWNER).write_text(f"{os.getpid()} {procs.start_ticks(os.getpid())}")
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

    def start(
        self,
        number: int,
        params: dict[str, Any],
        launch: str,
        env: dict[str, str],
        files: dict[str, bytes] | None = None,
    ):
        """Start a trial (``env``: who it is, from the driver; ``files``: what its folder
        holds first, a resumed trial's pause checkpoint); returns its process record."""
        self._discard()
        clear_stale(self.base.parent)
        run_dir = self.base / self.study / trial_run_name(number)
        run_dir.mkdir(parents=True)
        for name, data in (files or {}).items():
            (run_dir / Path(name).name).write_bytes(data)
        where = self.where()
        gpus = where["gpus"]
        proc_env = self.spec.environment(
            {
                **os.environ,
                **thread_env(1, self.cpus),
                **self.spec.env,
                **env,  # the driver's (see ray_pool.driver_env): a thread count set there wins
                ENV_TRIAL_DIR: str(run_dir),
                "CUDA_VISIBLE_DEVICES": ",".join(gpus),
            }
        )
        self.proc = self.spec.start(
            params, run_dir, proc_env, launch, self.metric, self._watch_r, self.grace_s
        )
        self.sender = FolderSender(run_dir)
        self.synced = time.monotonic()
        record = {**procs.record(self.proc.pid), "node": where["node"], "gpus": gpus}
        return {**record, "package": package_id()}

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
        ended = rc is not None and complete
        out = _news(proc, reports, chunks, rc if ended else None)
        if ended:
            self._discard()
        return out

    def answer(self, seq: int | None, prune: bool) -> None:
        if self.proc is not None:
            self.proc.answer(Report(seq, None, None), prune)

    def stop(self) -> dict[str, Any]:
        """The host's last call: end the running trial (SIGTERM, SIGKILL after the grace),
        and leave nothing of the host on the node. Returns what :meth:`poll` does, its folder's
        changes as far as one message holds them, with ``rc`` set only where the trial had
        ended by itself before the stop (its result stands; the driver had not heard yet)."""
        news = _news(None, [], [], None)
        proc, sender = self.proc, self.sender
        if proc is not None and sender is not None:
            rc = proc.poll()
            if rc is None:
                stop_together([proc], self.grace_s)
            reports = proc.reports()
            chunks, complete = sender.changes(BUDGET)
            # an end whose files did not all fit stays unsaid: the trial runs again rather
            # than keep half a checkpoint
            news = _news(proc, reports, chunks, rc if proc.ended_by_itself and complete else None)
        self._discard()
        shutil.rmtree(self.base, ignore_errors=True)
        return news

    def _discard(self) -> None:
        """The finished trial's node-local folder: everything in it has reached the driver."""
        if self.proc is not None:
            self.proc.end()
            shutil.rmtree(self.proc.run_dir, ignore_errors=True)
        self.proc = self.sender = None

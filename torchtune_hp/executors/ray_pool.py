"""Run trials on a Ray cluster: the driver's side of ``executor: {name: ray}``.

The driver stays what it is with the local pool: the only writer of ``study.db``, the sampler,
the pruner, the board. Ray places the trials: :class:`RayExecutor` keeps up to ``workers``
:class:`~torchtune_hp.executors.ray_node.TrialHost` actors, each with the trial's resources,
and hands each a trial at a time. Every 50 ms it polls the running ones: their reports go to
the study and the pruner's verdicts go back at once (a message each way, as fast as the local
pool's files); what changed in their folders is written into ``logs/<study>/trial_NNNN``.

Faults. A host whose node is lost (``RayActorError``) has its trial run again once on a new
host, which Ray places on a live node; a second loss makes the trial FAILED with the reason.
When the cluster itself is gone (``ray stop``, the head node died: its control store refuses
connections) nothing can run again: the study stops with :class:`~torchtune_hp.errors.
ClusterGone`, its running trials interrupted (run again by the next run), instead of promising
retries and then being ended by Ray a minute later.
Stopping the study (Ctrl-C, SIGTERM) stops every trial through its host and then kills the
hosts; if the driver dies (kill -9), Ray ends the job's actors, and their trials' guards end
the trials.

The connection (:func:`connect`) is checked before the study is opened: a cluster that cannot
be reached, or one with no node large enough for one trial, is a :class:`ConfigError` and costs
no trial.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchtune_hp import procs, signals
from torchtune_hp.board.tags import OUR_RUNS
from torchtune_hp.errors import ClusterGone, ConfigError
from torchtune_hp.executors import Finished
from torchtune_hp.executors.address import ADDRESS_FORMS, host_port, unreachable
from torchtune_hp.executors.folder_sync import apply_chunks
from torchtune_hp.executors.pool import forward_notes, forward_reports, last_reported, trial_env
from torchtune_hp.executors.process import (
    MISSED_STOP,
    LaunchSpec,
    Report,
    keep_earlier_logs,
    process_outcome,
)
from torchtune_hp.executors.ray_exit import shut_down
from torchtune_hp.executors.ray_node import package_id
from torchtune_hp.outcome import Outcome, describe
from torchtune_hp.trial import PAUSE_CHECKPOINT, Trial

RETRIES = 1  # a trial whose node is lost runs again this many times
PROBE_S = 5.0  # how long an address may take to answer before it counts as unreachable
PROBE_EVERY_S = 2.0  # how often a running study checks that its cluster still answers
# how long a lost host's cluster must go on answering to be alive: `ray stop` ends the workers
# first and the control store about 2 s later (a helper's 2 s took it for lost hosts, 3 of 3)
LOST_SETTLE_S = 6.0
WAIT_NOTED_S = 0.5  # a wait for placement this long is left out of the trial's duration
INSTALL = "pip install 'torchtune_hp[ray]'"
KEY = "executor.address"
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class _Host:
    actor: Any
    trial: Trial | None = None
    launch: str = ""
    start_ref: Any = None  # the pending start() of its trial
    poll_ref: Any = None
    started: float = 0.0  # wall-clock time the trial was handed over
    placed: bool = False  # Ray has placed it (it has started a trial)
    pruned: bool = False
    killed_for: str | None = None
    refused: set[str] = field(default_factory=set)  # why files of its trial were not copied


# Variables that describe the machine they are set on, not the user's run: a node keeps its own.
MACHINE_OWN = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "HOSTNAME", "SHLVL", "_",
    "TMPDIR", "TEMP", "TMP", "DISPLAY", "TERM", "COLORTERM", "MAIL", "PYTHONHOME",
    "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "PYTHONUNBUFFERED",
}  # fmt: skip
MACHINE_PREFIXES = ("LD_", "DYLD_", "CONDA", "RAY_", "SSH_", "XDG_", "TORCHTUNE_HP_", "NVIDIA_")


def driver_env() -> dict[str, str]:
    """The driver's environment that travels with each trial, as a local pool's trials inherit
    it (API keys, ``PYTHONPATH``, ``CUBLAS_WORKSPACE_CONFIG``, thread counts), less what
    belongs to the driver's machine (:data:`MACHINE_OWN`, :data:`MACHINE_PREFIXES`)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in MACHINE_OWN and not k.startswith(MACHINE_PREFIXES)
    }


class RayExecutor:
    """The :class:`~torchtune_hp.executors.Executor` of a Ray cluster (see the module
    docstring). ``resources``: ``{"cpu": 2, "gpu": 1}`` per trial."""

    def __init__(
        self,
        study: Any,
        spec: LaunchSpec,
        workers: int,
        resources: dict[str, float],
        grace_s: float = procs.KILL_GRACE_S,
        address: str = "",
    ) -> None:
        """``address``: the recipe's ``executor.address``; for a Ray Client address
        (``ray://host:port``) liveness is asked of the client server, which is what this
        machine reaches (a tunnel to port 10001), not of the head's internal address."""
        import ray

        from torchtune_hp.executors.ray_node import TrialHost

        self.ray = ray
        # what answers while the cluster lives: its control store, or the Ray Client server
        self.probe_address = (
            address.removeprefix("ray://")
            if address.startswith("ray://")
            else ray.get_runtime_context().gcs_address
        )
        self.gone = False  # the cluster stopped answering: no more calls to it
        self._next_probe = 0.0  # when wait() next checks that the cluster answers
        self._settled = False  # a lost host's longer check was made in this wait()
        self._other_package: set[str | None] = set()  # hosts warned of (see _check_package)
        self.study = study
        self.spec = spec
        self.capacity = workers
        self.resources = resources
        self.grace_s = grace_s
        self._host_class = ray.remote(TrialHost).options(
            num_cpus=resources.get("cpu", 1),
            num_gpus=resources.get("gpu", 0),
            max_restarts=0,
            max_task_retries=0,
            # A host ends its trials itself: when it dies, its trials' guards end each trial's
            # whole process group. Ray's own clean-up would SIGKILL the guards first (they are
            # the host's children), leaving the trials (their grandchildren) running.
            runtime_env={"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}},
        )
        self.hosts: list[_Host] = []
        self.attempts: dict[int, int] = {}
        self._asked: dict[int, float] = {}  # trial -> when it was first handed to Ray
        self._done: list[Finished] = []

    @property
    def active(self) -> int:
        return sum(h.trial is not None for h in self.hosts) + len(self._done)

    # -- handing trials out ------------------------------------------------------------------
    def _new_host(self) -> _Host:
        actor = self._host_class.remote(
            self.spec,
            self.study.name,
            self.study.metric,
            self.resources.get("cpu", 1),
            self.grace_s,
        )
        host = _Host(actor)
        self.hosts.append(host)
        return host

    def _idle(self) -> _Host | None:
        return next((h for h in self.hosts if h.trial is None), None)

    def submit(self, trial: Trial) -> None:
        self._asked.setdefault(trial.number, time.time())
        for waiting in [h for h in self.hosts if h.trial is not None and not h.placed]:
            self._move_to_idle(waiting)  # trials that wait for Ray go first, in order
        self._hand(self._idle() or self._new_host(), trial)

    def _hand(self, host: _Host, trial: Trial) -> None:
        launch = secrets.token_hex(8)
        env = {**driver_env(), **trial_env(self.study, trial, launch)}
        host.trial, host.launch, host.poll_ref = trial, launch, None
        host.pruned, host.killed_for, host.started = False, None, time.time()
        host.refused = set()
        if trial.resume_from is not None:  # the node's new logs replace the driver's copy
            keep_earlier_logs(self.study.trial_dir(trial.number), self.spec.run_outputs)
        host.start_ref = host.actor.start.remote(
            trial.number, trial.params, launch, env, carried_files(trial)
        )

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> list[Finished]:
        ray = self.ray
        if self.gone:  # nothing left to ask (the loop's stop asks once more)
            return []
        begun = time.monotonic()
        self._settled = False
        if begun >= self._next_probe and self.hosts:
            self._next_probe = begun + PROBE_EVERY_S
            self._check_cluster()
        busy = [h for h in self.hosts if h.trial is not None]
        for h in busy:
            if h.trial is None:  # given to another host meanwhile
                continue
            if h.start_ref is not None:
                ready, _ = ray.wait([h.start_ref], timeout=0)
                if not ready:  # Ray has not placed this host yet (the cluster is busy):
                    self._move_to_idle(h)  # an idle host holds resources it could use
                    continue
                try:
                    record = ray.get(h.start_ref)
                except Exception as e:
                    self._lost(h, e)
                    continue
                h.start_ref, h.placed = None, True
                assert h.trial is not None
                self._check_package(record.pop("package", None), record.get("host"))
                self.study.record_process(h.trial, record)
                self._placed(h)
            if h.poll_ref is None:
                h.poll_ref = h.actor.poll.remote()
        polls = [h.poll_ref for h in busy if h.trial is not None and h.poll_ref is not None]
        if polls:
            ray.wait(polls, num_returns=len(polls), timeout=max(timeout_s, 0.0))
        for h in busy:
            if h.trial is None or h.poll_ref is None:
                continue
            ready, _ = ray.wait([h.poll_ref], timeout=0)
            if ready:
                ref, h.poll_ref = h.poll_ref, None
                try:
                    news = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    self._lost(h, e)
                    continue
                except ray.exceptions.RayError as e:  # the host failed, not its node
                    self._failed(h, f"its host failed: {type(e).__name__}: {describe(e)}")
                    continue
                self._heard(h, news)
        left = timeout_s - (time.monotonic() - begun)
        if not self._done and left > 0:
            time.sleep(left)
        done, self._done = self._done, []
        return done

    def _check_package(self, theirs: dict[str, str] | None, host: str | None) -> None:
        """Warn, once per host, where a node runs another torchtune_hp than the driver: the
        README asks for the same environment on every node, and a ``ray start`` from another
        environment ran trials on an old copy without a word."""
        ours = package_id()
        if theirs is None or theirs["digest"] == ours["digest"] or host in self._other_package:
            return
        self._other_package.add(host)
        warnings.warn(
            f"the Ray node on {host} runs torchtune_hp {theirs['version']} from "
            f"{theirs['path']}, other code than the driver's ({ours['version']} from "
            f"{ours['path']}): every node needs the driver's environment (start `ray` with "
            "the python that runs torchtune-hp), or trials may run other code",
            RuntimeWarning,
            stacklevel=2,
        )

    def _placed(self, h: _Host) -> None:
        """``h``'s trial has started on its node: the time it waited for Ray to place it (a
        busy cluster) is not part of its duration, nor of what ``started`` measures."""
        assert h.trial is not None
        h.started = self._end_wait(h.trial)

    def _end_wait(self, trial: Trial) -> float:
        """Note the time ``trial`` waited since it was asked for (placed now, or stopped
        before it ever was: it ran for none of it); returns now."""
        now = time.time()
        waited = now - self._asked.pop(trial.number, now)
        if waited >= WAIT_NOTED_S:
            self.study.waited(trial, waited)
        return now

    def _move_to_idle(self, h: _Host) -> None:
        """Give the trial that waits for ``h`` to be placed to a host that sits idle (after a
        retry, or at the end of a study, the idle ones would otherwise keep the resources)."""
        idle = self._idle()
        if idle is None or h.trial is None or h.placed or h.start_ref is None:
            return
        if self.ray.wait([h.start_ref], timeout=0)[0]:
            return  # placed after all: its trial has started
        trial, h.trial, h.start_ref = h.trial, None, None
        self.hosts.remove(h)
        self._kill(h)
        self._hand(idle, trial)

    def _heard(self, h: _Host, news: dict[str, Any]) -> None:
        trial = h.trial
        assert trial is not None
        run_dir = self.study.trial_dir(trial.number)
        for problem in apply_chunks(run_dir, news["chunks"]):
            if problem not in h.refused:  # a file that keeps growing: said once
                h.refused.add(problem)
                self.study.note(trial.number, f"a file of it could not be copied back: {problem}")

        def answer(report: Report, prune: bool) -> None:
            if prune:
                h.pruned = True
            if report.seq is not None or prune:
                h.actor.answer.remote(report.seq, prune)

        reports = [Report(*r) for r in news["reports"]]
        left = forward_reports(self.study, trial, reports, answer)
        forward_notes(self.study, trial.number, news["problems"])
        h.killed_for = news["killed_for"]
        if news["rc"] is None or left:  # a stop cut its reports short: the stop ends it
            return
        if h.pruned and not news["pruned"]:  # said once it had ended on its node
            self.study.note(trial.number, MISSED_STOP, warn=False)
        outcome = process_outcome(
            run_dir,
            h.launch,
            news["rc"],
            self.study.metric,
            killed_for=h.killed_for,
            pruned=news["pruned"],
            timeout_s=self.spec.timeout_s,
            started=h.started,
            last_reported=last_reported(self.study, trial.number),
            regex=self.spec.regex,
        )
        h.trial = None
        self._done.append(Finished(trial, outcome))

    def _failed(self, h: _Host, why: str, outcome: Outcome | None = None) -> None:
        """``h`` is gone with its trial, which ends FAILED with ``why`` (or as ``outcome``
        says, ``why`` then in its note)."""
        trial = h.trial
        assert trial is not None
        self.hosts.remove(h)
        self._kill(h)
        self._asked.pop(trial.number, None)
        if outcome is not None:
            self.study.note(trial.number, why, warn=False)
        self._done.append(Finished(trial, outcome or Outcome.failed(why)))

    def _lost(self, h: _Host, error: BaseException) -> None:
        """``h``'s actor is gone (its node lost): run its trial again on a new host, once."""
        trial = h.trial
        assert trial is not None
        # once per wait(): a node's hosts are all lost in one, and the loop waits meanwhile
        self._check_cluster(settle_s=0.0 if self._settled else LOST_SETTLE_S)
        self._settled = True
        n = self.attempts[trial.number] = self.attempts.get(trial.number, 0) + 1
        lost = isinstance(error, self.ray.exceptions.RayActorError)
        # Ray's first line says whether the node died or only the host's process
        what = "its Ray host died" if lost else "Ray could not run it"
        why = f"{what}: {type(error).__name__}: {describe(_first_line(error))}"
        if h.pruned:  # the pruner had stopped it: it ends as it would have, not run again
            self._failed(h, why, Outcome.pruned())
            return
        if n > RETRIES:
            self._failed(h, f"{why} (after {n} tries)")
            return
        self.hosts.remove(h)
        self._kill(h)
        _keep_lost_attempt(self.study.trial_dir(trial.number), n)
        where = "the beginning" if trial.resume_from is None else "its pause checkpoint"
        self.study.run_again(trial, f"{why}; it was started again from {where}, on a new host")
        self.submit(trial)

    def _check_cluster(self, settle_s: float = 0.0) -> None:
        """Raise :class:`ClusterGone` when what answers while the cluster lives (its control
        store; a lost node leaves it up, ``ray stop`` or a dead head node does not) refuses
        two connections in a row, asking on for ``settle_s`` (``ray stop`` ends the workers
        first, the store last). Asked every :data:`PROBE_EVERY_S` and at each lost host: Ray
        itself ends a driver whose control store has been gone for a minute."""
        where = host_port(self.probe_address)
        until, refused = time.monotonic() + settle_s, 0
        while refused < 2:
            refused = refused + 1 if where is None or unreachable(where, PROBE_S) else 0
            if refused == 0 and time.monotonic() >= until:
                return
            time.sleep(0.25)
        self.gone = True
        raise ClusterGone(
            f"the Ray cluster at {self.probe_address} is gone (stopped, or its head node "
            "died): the running trials are recorded as interrupted and run again when you run "
            "the same command with the cluster back up"
        )

    # -- stopping ----------------------------------------------------------------------------
    def stop_all(self) -> None:
        """Every placed host stops its trial (SIGTERM, SIGKILL after the grace) and clears its
        node-local folder; hosts that do not answer in time are killed, and their trials'
        guards end the trials. With the cluster gone there is nothing left to ask. A trial
        still waiting to be placed never ran: its wait is left out of its duration."""
        ray = self.ray
        for h in self.hosts:
            if h.trial is not None and not h.placed:
                with contextlib.suppress(Exception):  # a stop for a storage error goes on
                    self._end_wait(h.trial)
        if self.gone:
            for h in self.hosts:
                h.trial = None
            self.hosts.clear()
            return
        placed = [h for h in self.hosts if h.placed]
        # A poll sent before the stop may hold a trial's end: a host answers in order, and
        # what it says of a trial that ended by itself (also in its answer to the stop) stands.
        polls = {h.poll_ref: h for h in placed if h.trial is not None and h.poll_ref is not None}
        refs = {h.actor.stop.remote(): h for h in placed}
        for calls in (polls, refs):
            if not calls:
                continue
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=self.grace_s + 10)
            for ref in ready:
                h = calls[ref]
                h.poll_ref = None
                try:
                    news = ray.get(ref)
                    if h.trial is not None:
                        self._heard(h, news)  # an end goes to the next wait()
                except Exception:
                    pass  # the trial's record matters more than its last log lines
        for h in self.hosts:
            h.trial = None
            self._kill(h)
        self.hosts.clear()
        self._asked.clear()

    def _kill(self, h: _Host) -> None:
        try:
            self.ray.kill(h.actor, no_restart=True)
        except Exception:
            pass

    def close(self) -> None:
        """The hosts clear their node-local folders (see ``stop_all``), then go."""
        self.stop_all()
        shut_down(self.ray)


def carried_files(trial: Trial) -> dict[str, bytes]:
    """What a trial's folder on its node must hold before it starts: a resumed trial's pause
    checkpoint, which its earlier run's node sent to the driver's copy of the folder (the next
    run may land on another node)."""
    ckpt = trial.ckpt_path
    return {} if ckpt is None else {PAUSE_CHECKPOINT: Path(ckpt).read_bytes()}


def _reason(error: BaseException) -> str:
    """Ray's message in a line or two: its first line, and its last when that says more
    (``Package size (600.00MiB) exceeds the maximum size of 512.00MiB``)."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    picked = lines[:1] + [line for line in lines[1:] if "exceed" in line.lower()][:1]
    if len(picked) == 1 and len(lines) > 1:
        picked.append(lines[-1])
    text = " ".join(picked)
    return text if len(text) <= 500 else text[:497] + "..."


def _token_hint(address: str, error: BaseException) -> str:
    """What to try when joining by an explicit address fails: Ray turns token
    authentication on for such a driver only with ``RAY_AUTH_MODE=token`` (its refusal,
    ``InvalidAuthToken``, goes to Ray's log, and the error says only 'Failed to connect'; a
    Ray Client address, ``ray://``, waits out its connection timeout instead, some 30 s)."""
    if address in ("auto", "local") or os.environ.get("RAY_AUTH_MODE"):
        return ""
    said = str(error).lower()
    signs = ("auth", "failed to connect", *(("timeout",) if address.startswith("ray://") else ()))
    if not any(sign in said for sign in signs):
        return ""
    return (
        "; if the cluster uses token authentication (Ray's default), run the driver with "
        "RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _keep_lost_attempt(run_dir: Path, n: int) -> None:
    """What the lost attempt had copied back moves to ``lost_attempt_<n>/`` in the trial's
    folder (the board's own runs stay), so the next attempt starts with a clean folder; a
    pause checkpoint is copied, as a resumed trial's next attempt goes on from it."""
    keep = run_dir / f"lost_attempt_{n}"
    keep.mkdir(exist_ok=True)
    for entry in os.listdir(run_dir):
        if entry in OUR_RUNS or entry.startswith("lost_attempt_") or entry == "params.yaml":
            continue
        if entry == PAUSE_CHECKPOINT:  # a resumed trial's retry goes on from it again
            shutil.copy2(run_dir / entry, keep / entry)
            continue
        os.replace(run_dir / entry, keep / entry)


# -- connecting --------------------------------------------------------------------------------
def unshipped(working_dir: Path, excludes: list[str], paths: list[Path]) -> dict[Path, str]:
    """Which of ``paths`` (under ``working_dir``) Ray leaves out of the folder it ships, and
    what leaves it out: Ray's own rules (``excludes``; a ``.gitignore``, unless
    RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1, and a ``.rayignore`` in any folder on the way), asked
    along each path only (a folder's contents by one made-up name in it), not by walking
    the folder. Empty where Ray's helpers are not as this Ray version has them."""
    try:
        from ray._private.runtime_env import packaging

        given, ignore_file = packaging._get_excludes, packaging._get_ignore_file
    except (ImportError, AttributeError):
        return {}
    names = [".rayignore"]
    if os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1":
        names.insert(0, ".gitignore")
    left_out: dict[Path, str] = {}
    for path in paths:
        parts = path.relative_to(working_dir).parts
        chain = [working_dir / Path(*parts[:i]) for i in range(len(parts) + 1)]
        if path.is_dir():
            chain.append(path / "x")
        rules = [(given(working_dir, excludes), "the executor's excludes")]
        for node in chain:
            if node.is_dir():
                found = ((ignore_file(node, n), str(node / n)) for n in names)
                rules += [(rule, where) for rule, where in found if rule is not None]
            hit = next((where for rule, where in rules if rule(node)), None)
            if hit is not None:
                left_out[path] = hit
                break
    return left_out


def connect(
    address: str, recipe_path: Path, working_dir: Path, excludes: list[str], resources: dict
) -> None:
    """Join (or, with ``local``, start) the cluster, with ``working_dir`` shipped to every node
    (``close`` disconnects, which ends a cluster started here). A ConfigError, before any
    trial, when Ray is not installed, the cluster cannot be reached, or no node can hold one
    trial."""
    # Ray's native crash handler, in the driver, answers a SIGTERM that comes while it starts
    # (a whole process group stopped: Slurm, systemd) with an abort (exit -6) instead of the
    # study's clean stop; read when Ray is first imported, and a user's own setting stands
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise ConfigError(
            recipe_path, "executor.name", f"'ray' needs Ray, which is not installed: {INSTALL}"
        ) from None
    started_here = address == "local"
    if not started_here:
        _probe(address, recipe_path)
    runtime_env = {"working_dir": str(working_dir), "excludes": excludes}
    main = threading.current_thread() is threading.main_thread()
    ours = {sig: signal.getsignal(sig) for sig in STOPS} if main else {}
    try:
        ray.init(
            address=address,
            runtime_env=runtime_env,
            include_dashboard=False if started_here else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except SystemExit as e:  # Ray's own SIGTERM handler, in force while it starts a cluster
        if e.code == signal.SIGTERM:
            signals.stopped_by(signal.SIGTERM)  # exit 143 with the one line, as for Ctrl-C
        raise
    except Exception as e:
        if "runtime env" in str(e).lower() or "package size" in str(e).lower():
            raise ConfigError(
                recipe_path,
                "executor",
                f"the recipe's folder {working_dir} could not be shipped to the cluster: "
                f"{_reason(e)} (list what the nodes need not get in a .rayignore or "
                ".gitignore there, as Ray reads them)",
            ) from None
        raise ConfigError(
            recipe_path,
            KEY,
            f"cannot join the Ray cluster at {address!r}: {_reason(e)}{_token_hint(address, e)}",
        ) from None
    finally:  # Ray's driver turns SIGTERM into sys.exit: a stop is ours to record and report
        for sig, handler in ours.items():
            if handler is not None:
                signal.signal(sig, handler)
    try:
        _check_resources(ray, address, recipe_path, resources)
    except ConfigError:
        shut_down(ray)
        raise


def _probe(address: str, recipe_path: Path) -> None:
    """Fail in seconds, not minutes (Ray retries an unreachable address for a long time)."""
    target, source = address, ""
    if address == "auto":
        target, source = os.environ.get("RAY_ADDRESS", ""), " (from RAY_ADDRESS)"
        if not target:
            where = _address_file()
            target = _current_cluster(where)
            source = (
                f" (from {where}, left by the last `ray start` on this machine: it may be "
                "stale or another session's cluster; give host:port to be sure)"
            )
        if not target:
            raise ConfigError(
                recipe_path,
                KEY,
                "'auto' found no running Ray cluster on this machine: start one with "
                "`ray start --head`, or give its address (host:port), or use 'local'",
            )
    where = host_port(target)
    if where is None:
        raise ConfigError(recipe_path, KEY, f"expected {ADDRESS_FORMS}, got {target!r}{source}")
    error = unreachable(where, PROBE_S)
    if error is not None:
        raise ConfigError(
            recipe_path,
            KEY,
            f"the Ray cluster at {target!r}{source} cannot be reached ({error}); is `ray start "
            "--head` running there, and is its port open to this machine?",
        )


def _address_file() -> Path | None:
    """Where ``ray start`` records the address that ``auto`` reads (Ray's own convention)."""
    try:
        from ray._private.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except Exception:  # a private function of Ray's: gone in some version
        return None


def _current_cluster(path: Path | None) -> str:
    """The address ``ray start`` left for ``auto`` at ``path``, or ''."""
    try:
        return "" if path is None else path.read_text().strip()
    except (OSError, ValueError):
        return ""


def _check_resources(ray: Any, address: str, recipe_path: Path, resources: dict) -> None:
    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    largest = ", ".join(
        sorted({f"{n.get('CPU', 0):g} CPU and {n.get('GPU', 0):g} GPU" for n in nodes})
    )
    raise ConfigError(
        recipe_path,
        "executor.resources_per_trial",
        f"asks for {cpu:g} CPU and {gpu:g} GPU per trial, but no node of the Ray cluster at "
        f"{address!r} has that much (its nodes: {largest or 'none'})",
    )

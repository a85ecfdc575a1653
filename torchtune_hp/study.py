"""The study: the record of a search, and ask / tell / report on it.

``Study(name, space, logdir="logs")`` opens ``logs/<name>/study.db`` and resumes it when it
exists: finished trials are kept, trials left RUNNING by a driver that died are marked FAILED
(interrupted) and their parameters tried once more, and ``n_trials`` is the study's total, so
running ``optimize(f, n_trials=30)`` twice still ends at 30.

The study keeps records and answers questions; it runs nothing itself. ``optimize`` hands the
objective to the in-process executor and the shared driver loop
(:mod:`torchtune_hp.executors.loop`), which every executor uses. What happens to a trial is
announced to subscribers (:class:`StudyListener`: the TensorBoard board, the progress view), the
way Lightning calls its callbacks. The driver is the study's only writer, so it keeps an
in-memory view of every trial in step with the database: asking, telling and reporting cost the
same at trial 10,000 as at trial 10.

In a distributed training job (Lightning's ``strategy="ddp"`` runs the script again for every
rank but 0), a study opened on another rank than 0 is a *follower*: it reads the database
without taking the driver's lock, its ``ask()`` returns the trial rank 0 is running, and its
``tell``/``report`` write nothing. So the same script tunes a DDP model unchanged: every rank
trains the same trial, rank 0 alone records it, and the callback shares the prune decision. A
follower ends within a second of rank 0 ending, whatever the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import numbers
import os
import random
import socket
import sqlite3
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from torchtune_hp import files, procs
from torchtune_hp.board.tags import trial_run_name
from torchtune_hp.display import headline
from torchtune_hp.distributed import is_follower_rank
from torchtune_hp.errors import StorageError, StudyMismatch
from torchtune_hp.options import check_plugin
from torchtune_hp.outcome import Outcome, as_number, describe, outcome_of_return
from torchtune_hp.pruners import PRUNERS, Pruner, diverged, make_pruner
from torchtune_hp.record import BestTrial
from torchtune_hp.samplers import SAMPLERS, Sampler, SpaceExhausted, make_sampler
from torchtune_hp.space import Fixed, Param, Space, space_changes, space_diff
from torchtune_hp.storage import Completed, Storage, holds_nothing, utcnow
from torchtune_hp.trial import (
    PAUSE_CHECKPOINT,
    FrozenTrial,
    Interruption,
    Origin,
    Trial,
    TrialState,
    best_of,
    params_key,
    unreported,
)

if TYPE_CHECKING:
    from torchtune_hp.samplers.explain import Explanation

__all__ = ["Study", "StudyListener", "StudyMismatch", "best_of", "check_seed"]

MODES = ("min", "max")
INTERRUPTED = "interrupted"
MAX_SEED = 2**64 - 1
MAX_STEP = 2**63 - 1
_drove: list[bool] = []  # a study started driving in this process (see drove_here)


def _named(part: Any) -> str:
    """A sampler's or pruner's name (``gp``, ``asha``), or a user's class's."""
    return str(getattr(part, "name", None) or type(part).__name__)


def other_search(meta: Mapping[str, Any], now: Mapping[str, str]) -> list[str]:
    """How ``now`` (the names of a run's sampler and pruner) differs from what the study's
    last run searched with (``meta``): ``sampler 'gp' (its last run: 'random')``, ..."""
    return [
        f"{key} {now[key]!r} (its last run: {meta[key]!r})"
        for key in ("sampler", "pruner")
        if meta.get(key) not in (None, now[key])
    ]


def drove_here() -> bool:
    """Whether a study has started driving trials in this process: what a stop signal then
    interrupts (the command line's last line says so, or that nothing had started)."""
    return bool(_drove)


class StudyListener(Protocol):
    """What a subscriber may hear (every method is optional): a trial started, reported,
    finished; the sampler explained itself; a model-based pruner decided (with its reasons);
    the study closed."""

    def trial_started(self, study: Study, trial: Trial) -> None: ...
    def trial_reported(self, study: Study, number: int, step: int, value: float) -> None: ...
    def trial_finished(self, study: Study, trial: FrozenTrial) -> None: ...
    def sampler_explained(self, study: Study, explanation: Explanation, number: int) -> None: ...
    def trial_decided(self, study: Study, number: int, decision: Any) -> None: ...
    def study_closed(self, study: Study) -> None: ...


def _wants_explanation(listener: Any, number: int) -> bool:
    """A listener that draws the sampler's pictures and wants them now (it may pace itself)."""
    if getattr(listener, "sampler_explained", None) is None:
        return False
    wants = getattr(listener, "wants_explanation", None)
    return wants is None or bool(wants(number))


def _recorded(
    trials: Iterable[FrozenTrial], params: Mapping[str, Any], value: float
) -> FrozenTrial | None:
    """The first COMPLETE trial among ``trials`` with these parameters and this value (what
    ``add`` returns instead of recording a second copy)."""
    key = params_key(params)
    same = (t for t in trials if t.state is TrialState.COMPLETE and t.value == value)
    return next((t for t in same if params_key(t.params) == key), None)


def _ended_as(trial: FrozenTrial) -> str:
    """``COMPLETE, value 0.25`` or ``FAILED: <the error's last line>``."""
    if trial.state is TrialState.FAILED:
        line = headline(trial.error)
        return "FAILED" + (f": {line}" if line else "")
    return f"{trial.state.value}, value {trial.value!r}"


def check_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    return seed


def _closer(study: Study) -> Callable[[], None]:
    """``study.close`` without keeping ``study`` alive (the lock registry holds it)."""
    ref = weakref.ref(study)

    def close() -> None:
        owner = ref()
        if owner is not None:
            owner.close()

    return close


def _better(a: FrozenTrial, b: FrozenTrial | None, mode: str) -> bool:
    if b is None:
        return True
    assert a.value is not None and b.value is not None
    return a.value < b.value if mode == "min" else a.value > b.value


def _wait_for_database(path: Path, timeout_s: float = 60.0) -> Storage:
    """A follower opens rank 0's database read-only, once rank 0 has created it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            storage = Storage(path, read_only=True)
            if storage.get_meta():
                return storage
            storage.close()
        except (FileNotFoundError, StorageError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank 0 did not create the study within {timeout_s:.0f} s")
        time.sleep(0.1)


def refuse_other(
    where: Path | str,
    meta: Mapping[str, Any],
    trials: Sequence[FrozenTrial] | Callable[[], Sequence[FrozenTrial]],
    space: Space,
    metric: str,
    mode: str,
) -> list[str]:
    """StudyMismatch where the stored study (``meta``, its ``trials``: read only where the
    space changed, when a function) has another
    space, metric or mode than the one given; a space changed only where every stored trial
    still lies in it is taken (see :func:`~torchtune_hp.space.space_diff`): returns those
    changes. Opening a study and ``torchtune-hp validate`` both ask this."""
    stored = Space.from_dict(meta["space"])
    changed = space_diff(stored, space)
    if changed and callable(trials):
        trials = trials()
    held = [t.params for t in trials] if changed else []
    problems = [(f"space.{n}", text) for n, text in space_changes(stored, space, held)]
    for key, given in (("metric", metric), ("mode", mode)):
        if meta[key] != given:
            problems.append(
                (f"study.{key}", f"{key} changed: stored {meta[key]!r}, given {given!r}")
            )
    if problems:
        raise StudyMismatch(
            f"{where}: the existing study differs from the one given: "
            + "; ".join(text for _, text in problems)
            + ". Use another study name or logdir to start a new study.",
            [key for key, _ in problems],
        )
    return changed


class Study(BestTrial):
    """A named search over ``space``; see the module docstring for what resuming does."""

    def __init__(
        self,
        name: str,
        space: Space | Mapping[str, Param],
        sampler: str | Sampler | None = "random",
        seed: int | None = None,
        logdir: str | Path | None = "logs",
        mode: str = "min",
        metric: str = "value",
        sampler_options: Mapping[str, Any] | None = None,
        pruner: str | Pruner | None = "none",
        pruner_options: Mapping[str, Any] | None = None,
        tensorboard: bool = True,
        images_every: int = 5,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(images_every, bool) or not isinstance(images_every, int) or images_every < 0:
            raise ValueError(f"images_every must be an integer >= 0, got {images_every!r}")
        self.name = files.check_study_name(name)
        seed = check_seed(seed)
        self.space = Space.of(space)
        self.mode = mode
        self.metric = metric
        self.images_every = images_every
        # ~ as a shell reads it (a recipe's logdir is expanded so too)
        home = None if logdir is None else files.absolute(os.path.expanduser(os.fspath(logdir)))
        self.dir = None if home is None else home / name
        self.follower = is_follower_rank()
        if self.follower and self.dir is None:
            raise ValueError(
                "Study(logdir=None) in a distributed job's rank > 0: every rank would run its "
                "own in-memory study with its own parameters. Give the study a logdir, so the "
                "other ranks follow rank 0's trials."
            )
        self.recovered: list[int] = []
        self.stopped = False  # set by interrupted(): closing then skips the final pictures
        self._listeners: list[Any] = []
        self._lock: files.StudyLock | None = None
        self._driving = False
        self._view: dict[int, FrozenTrial] = {}
        self._finished: list[FrozenTrial] = []  # in the order they finished: what samplers see
        self._finished_at: dict[int, int] = {}  # number -> index in _finished
        self._pending: dict[int, FrozenTrial] = {}
        self._n_counted = 0
        self._best: FrozenTrial | None = None
        self._noted: set[tuple[int, str]] = set()
        self._resumed_at: dict[int, int] = {}  # a paused trial run again -> its last step then
        self._over: set[int] = set()  # resumed trials said to have trained from the start
        self._failed_resume: set[int] = set()  # paused trials whose resumed run failed
        self._other_keys: dict[int, set[str]] = {}  # what report() named, when not the metric
        # the start a follower last joined, and its trial (see _follow)
        self._followed: tuple[str, int] | None = None
        self._told_to_stop: set[int] = set()  # should_prune said stop (tell records PRUNED)
        self._unfit: list[str] = []  # queued points this ask dropped (see _completed)
        self._saw_driver = False
        # a follower's trials when it closed: a script reads study.trials or best_params
        # after its `with` block on every rank, and rank 0's answer comes from memory
        self._as_closed: list[FrozenTrial] | None = None
        self._reseeded: int | None = None  # the seed a reopened study had, when given another
        self._renamed = False  # its folder was renamed or copied since it last ran
        # what this open changes in the stored study (a widened space, a new seed, a folder's
        # new name): stored when it first records a trial, queued or added point (see
        # _store_changes), so an open to read the study, or a run that trains nothing,
        # changes nothing
        self._changes: dict[str, Any] = {}
        self._search_to_store: dict[str, str] | None = None  # sampler, pruner: at the 1st ask
        # None is the default, as Optuna's sampler=None / pruner=None
        sampler = "random" if sampler is None else sampler
        pruner = "none" if pruner is None else pruner
        self.pruner: Pruner = self._check_before_opening(
            sampler, sampler_options, pruner, pruner_options
        )
        self.storage = self._open_storage()
        try:
            stored = self._load_or_init_meta(seed)
            self.sampler: Sampler = (
                make_sampler(sampler, self.seed, dict(sampler_options or {}), mode)
                if isinstance(sampler, str)
                else sampler
            )
            # A pruner with a model of the curves (gp) learns the space, and hands the gp
            # sampler its forecasts of stopped trials' final values.
            bind = getattr(self.pruner, "bind", None)
            if callable(bind):
                bind(self.space, mode, self.seed or 0)
            if hasattr(self.sampler, "final_values"):  # set or cleared: a reused sampler
                self.sampler.final_values = getattr(self.pruner, "final_values", None)
            for t in self.storage.trials():
                self._remember(t)
            if self._reseeded is not None and self._view:
                warnings.warn(
                    f"study {self.name!r} ({self.dir}) had seed {self._reseeded} until now: "
                    f"its next trials draw from seed {self.seed}, its {len(self._view)} "
                    "trials so far stay as they are (another study name starts afresh)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if not self.follower and self.dir is not None:
                self._say_other_search(stored)
            if not self.follower:
                self._start_driving(tensorboard)
        except BaseException:
            self.close()
            raise

    def _say_other_search(self, meta: Mapping[str, Any]) -> None:
        """Where a study with trials was run with another sampler or pruner, say so: a study
        reopened without them (``Study(name, space)`` takes random search and no pruner)
        would otherwise switch silently (the seed's change is said too). Their names are
        stored when this object first asks for a trial (an open that runs nothing, to read
        the study, changes nothing), not their settings. ``meta``: as this open read it."""
        now = {"sampler": _named(self.sampler), "pruner": _named(self.pruner)}
        changed = other_search(meta, now)
        if changed and self._view:
            warnings.warn(
                f"study {self.name!r} ({self.dir}) goes on with {' and '.join(changed)}: a "
                "study stores their names, not their settings; give the last run's again to "
                "search as it did",
                UserWarning,
                stacklevel=3,
            )
        if any(meta.get(key) != name for key, name in now.items()):
            self._search_to_store = now

    def _check_before_opening(
        self,
        sampler: str | Sampler,
        sampler_options: Mapping[str, Any] | None,
        pruner: str | Pruner,
        pruner_options: Mapping[str, Any] | None,
    ) -> Pruner:
        """Refuse a bad sampler, pruner or a study that differs from the stored one before
        taking the folder: taking it closes an idle Study of this process on the same folder
        (a notebook cell run again), which a refused Study must leave working. Returns the
        pruner (it needs nothing stored; the sampler needs the stored seed, and is made
        again once the folder is taken)."""
        if isinstance(sampler, str):
            make_sampler(sampler, 0, dict(sampler_options or {}), self.mode)  # checks only
        else:
            check_plugin("sampler", sampler, list(SAMPLERS), "sample", "space, trials, pending")
        if not isinstance(pruner, str):
            check_plugin("pruner", pruner, list(PRUNERS), "prune", "trial, others, mode")
        if not isinstance(sampler, str) and getattr(sampler, "mode", self.mode) != self.mode:
            raise ValueError(
                f"the sampler minimizes/maximizes ({sampler.mode!r}) "  # type: ignore[attr-defined]
                f"unlike the study (mode={self.mode!r}); give both the same mode"
            )
        made: Pruner = (
            make_pruner(pruner, dict(pruner_options or {})) if isinstance(pruner, str) else pruner
        )
        db = None if self.dir is None else self.dir / files.DATABASE
        if db is None or self.follower or db.is_symlink() or not db.is_file():
            return made
        try:  # a look at the stored study; the check under the folder's lock follows anyway
            peek = Storage(db, read_only=True)
            try:
                meta = peek.get_meta()
                if meta:
                    refuse_other(self.dir, meta, peek.trials, self.space, self.metric, self.mode)
            finally:
                peek.close()
        except (StorageError, OSError, sqlite3.Error):
            pass
        return made

    def _open_storage(self) -> Storage:
        if self.dir is None:
            return Storage(None)
        db = self.dir / files.DATABASE
        if self.follower:
            return _wait_for_database(db)
        files.make_study_dir(self.dir)
        self._lock = files.StudyLock(self.dir, on_handover=_closer(self)).acquire()
        weakref.finalize(self, self._lock.release)  # freed without close(): the folder is free
        try:
            if db.is_symlink():
                raise files.unsafe(db)
            others = [p for p in self.dir.iterdir() if not p.name.startswith(files.DATABASE)]
            if others and (not db.exists() or holds_nothing(db)):  # an empty one holds none
                what = "an empty study.db" if db.exists() else "no study.db"
                aside = files.set_aside_leftovers(self.dir)
                if aside is not None:
                    warnings.warn(
                        f"{self.dir} held files of an earlier study but {what}: moved them "
                        f"to {aside}, so none of them is read as this study's",
                        stacklevel=3,
                    )
            return Storage(db, before_restore=self._lock.follow_folder)
        except BaseException:
            self._lock.release()
            raise

    def _start_driving(self, tensorboard: bool) -> None:
        _drove.append(True)
        if self.dir is not None:
            self.storage.set_meta(
                {
                    "driver": {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "since": utcnow().isoformat(),
                    }
                }
            )
        if tensorboard and self.dir is not None:
            from torchtune_hp.board import StudyBoard  # TensorBoard loads only when used

            board = StudyBoard(
                self.dir, self.name, self.space, self.metric, self.mode, self.images_every
            )
            board.sync(self._finished)
            if self._renamed:  # its earlier rows name the study as it was: one study in the table
                board.relabel(self._finished)
                self._changes["name"] = self.name  # relabelled: stored with its first trial
            self.subscribe(board)
        left = [t.number for t in self._view.values() if t.state is TrialState.RUNNING]
        if left:
            self._recover(
                f"{INTERRUPTED}: the process running this trial died; its parameters are retried "
                "once",
                Interruption.DIED,
                found_later=True,
            )
            paused = [n for n in left if self._view[n].state is TrialState.PRUNED]
            failed = [n for n in left if n not in paused]
            what = []
            if failed:
                what.append(f"{failed} marked FAILED and queued to run again once")
            if paused:
                what.append(f"{paused} paused again (they ran after a pause), to resume later")
            warnings.warn(
                f"study {self.name!r}: trial(s) {left} were left RUNNING by a process that "
                f"died: {'; '.join(what)}",
                stacklevel=3,
            )
        self._driving = True  # from now on every RUNNING trial is one this object asked

    def _load_or_init_meta(self, seed: int | None) -> dict[str, Any]:
        """Read the stored study (or start one), check this open against it, and return what
        was read (nothing changes the sampler's and pruner's names before the first ask)."""
        meta = self.storage.get_meta()
        self._created = not meta
        if self.follower:  # the same script on every rank: a seed given is rank 0's too
            self.seed = int(meta["seed"]) if seed is None else seed
            return meta
        if not meta:
            self.seed = random.randrange(2**31) if seed is None else seed
            self.storage.set_meta(
                {
                    "name": self.name,
                    "space": self.space.to_dict(),
                    "metric": self.metric,
                    "mode": self.mode,
                    "seed": self.seed,
                }
            )
            return meta
        # a study's name is its folder's: a folder renamed or copied is the study of that name
        self._renamed = meta.get("name", self.name) != self.name
        taken = refuse_other(
            self.dir or self.name, meta, self.storage.trials, self.space, self.metric, self.mode
        )
        if taken:
            self._changes["space"] = self.space.to_dict()
            warnings.warn(
                f"study {self.name!r} ({self.dir}) goes on in a changed space that holds every "
                f"trial so far: {'; '.join(taken)}",
                UserWarning,
                stacklevel=3,
            )
        if seed is not None and seed != meta["seed"]:
            self._reseeded = int(meta["seed"])
            self._changes["seed"] = seed  # stored with its first trial, as the space is
        self.seed = int(meta["seed"]) if seed is None else seed
        # what an earlier driver left for its followers is not this one's: a follower must
        # not join a trial a dead driver left RUNNING, nor end on an old loop's end
        self.storage.set_meta({"started": None, "loop": None})
        return meta

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(self, listener: Any) -> None:
        """Tell ``listener`` what happens from now on (see :class:`StudyListener`)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Any) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: str, *args: Any) -> None:
        for listener in list(self._listeners):
            handler = getattr(listener, event, None)
            if handler is not None:
                handler(self, *args)

    # -- the in-memory view ------------------------------------------------------------------
    def _remember(self, t: FrozenTrial) -> FrozenTrial:
        """Keep the view, the finished and pending trials and the counts in step with one
        trial's row (O(1): nothing here walks the whole study)."""
        params = self.space.canonical(t.params)
        if params is not t.params:
            t = dataclasses.replace(t, params=params)
        old = self._view.get(t.number)
        self._n_counted += int(t.counts) - int(old is not None and old.counts)
        self._view[t.number] = t
        if t.state.finished:
            self._pending.pop(t.number, None)
            at = self._finished_at.get(t.number)
            if at is None:
                self._finished_at[t.number] = len(self._finished)
                self._finished.append(t)
            else:
                self._finished[at] = t
        else:
            at = self._finished_at.pop(t.number, None)
            if at is not None:  # a paused trial that runs again (resume): pending again
                del self._finished[at]
                for n, i in self._finished_at.items():
                    if i > at:
                        self._finished_at[n] = i - 1
            self._pending[t.number] = t
        if t.state is TrialState.COMPLETE and t.value is not None:
            if _better(t, self._best, self.mode):
                self._best = t
        return t

    def _refresh(self, number: int) -> FrozenTrial:
        return self._remember(self.storage.trial(number))

    # -- reading -----------------------------------------------------------------------------
    @property
    def trials(self) -> list[FrozenTrial]:
        if self.follower:  # read from rank 0's database; once closed, as they were then
            return self.storage.trials() if self._as_closed is None else list(self._as_closed)
        return list(self._view.values())

    def trial(self, number: int) -> FrozenTrial:
        if not self.follower:
            return self._view[number]
        if self._as_closed is None:
            return self.storage.trial(number)
        found = [t for t in self._as_closed if t.number == number]
        if not found:
            raise KeyError(f"no trial {number} in {self.dir}")
        return found[0]

    @property
    def finished_trials(self) -> Sequence[FrozenTrial]:
        """The trials that have ended (interrupted ones too), in the order they ended. A view
        kept up to date as trials end: copy it to keep a snapshot."""
        return self._finished if not self.follower else [t for t in self.trials if t.state.finished]

    @property
    def n_finished(self) -> int:
        """Trials that count toward ``n_trials`` (interrupted ones do not)."""
        return self._n_counted

    @property
    def incumbent(self) -> FrozenTrial | None:
        """The best COMPLETE trial so far, or None."""
        return self._best if not self.follower else best_of(self.trials, self.mode)

    def trials_dataframe(self) -> Any:
        """The trials as a pandas DataFrame, one row each, with Optuna's column names
        (``number``, ``value``, ``params_<name>``, ``state``, ``duration``, ...; see
        :mod:`torchtune_hp.export`), so analysis written for Optuna runs on it. Needs pandas."""
        from torchtune_hp.export import dataframe

        return dataframe(self.trials, self.space)

    def importance(self) -> dict[str, float]:
        """Each tunable hyperparameter's relevance (shares summing to 1), from the ARD
        lengthscales of a GP fit to the finished trials, whatever the sampler. On
        f(x, y) = g(x) + 0.01 h(y) it says that x matters and y does not."""
        from torchtune_hp.samplers.gp import importance  # GPyTorch loads only when asked

        return importance(self.space, self.trials, self.mode)

    def trial_dir(self, number: int) -> Path:
        if self.dir is None:
            raise ValueError("an in-memory study (logdir=None) has no trial folders")
        return self.dir / trial_run_name(number)

    # -- ask / tell / report -----------------------------------------------------------------
    def enqueue(self, params: Mapping[str, Any], skip_if_exists: bool = True) -> None:
        """Make a following ``ask()`` return ``params`` (e.g. a known-good default first).
        Parameters left out are drawn by the sampler when that trial starts (as Optuna's
        ``enqueue_trial``): ``{"optimizer": "adam"}`` tries Adam with the rest chosen.

        A study is resumed by running its script again, so by default parameters that a trial
        of the study already has (in any state) or that are already queued are not queued
        again (Optuna's ``skip_if_exists``, on by default here; for a partial point, a trial
        or queued point with the same values for the parameters given);
        ``skip_if_exists=False`` queues them anyway (repeats of a noisy objective).
        A follower (a DDP rank > 0, running the same script) checks the point and queues
        nothing: rank 0 queues it."""
        checked = self.space.validate(params, partial=True)
        if self.follower:
            return
        if skip_if_exists:
            key = params_key(checked)
            known = [t.params for t in self._view.values()] + self.storage.queued()
            if any(params_key({k: p.get(k) for k in checked}) == key for p in known):
                return
        self._store_changes()  # a point of a widened space: stored with it
        self.storage.push_queue(checked, Origin.ENQUEUED)

    def _store_changes(self) -> None:
        """Store what this open changed (see ``_changes``) before its first trial or queued
        point: from then on the stored study is the one these trials belong to."""
        if self._changes:
            self.storage.set_meta(self._changes)
            self._changes = {}

    def _completed(self, given: dict[str, Any], origin: Origin) -> Completed | None:
        """A queued point made whole: the parameters a partial ``enqueue`` left out are
        drawn by the sampler (its suggestion, with the given values in place of its own),
        and the trial counts as one of its draws (its Sobol design moves on). None, with a
        warning, for a point queued before the study's space was narrowed that lies outside
        it now: the stored trials must all lie in the space, so it is not run (the space is
        the user's later word)."""
        try:
            given = self.space.validate(given, partial=True)
        except ValueError as e:  # said once the queue's transaction is over (see ask)
            self._unfit.append(
                f"study {self.name!r}: a point queued earlier, {given}, is not run and leaves "
                f"the queue: it does not fit the study's space now ({e})"
            )
            return None
        missing = [name for name in self.space.params if name not in given]
        if not missing:
            return given, origin, None
        try:
            drawn = self.sampler.sample(
                self.space, list(self._finished), list(self._pending.values())
            )
            how, by = Origin.SAMPLER, "the sampler drew"
        except SpaceExhausted:  # a grid used up: the queued point still runs, whole
            rng = random.Random(f"{self.seed}:{len(self._view)}")
            drawn = self.space.decode([rng.random() for _ in range(self.space.dim)])
            how, by = origin, "drawn at random (the sampler has no points left)"
        params = {name: given[name] if name in given else drawn[name] for name in self.space.params}
        named = sorted(n for n in given if not isinstance(self.space.params[n], Fixed))
        return params, how, f"enqueued {named}; {by} {missing}"

    def add(
        self, params: Mapping[str, Any], value: float, skip_if_exists: bool = True
    ) -> FrozenTrial:
        """Record a trial evaluated elsewhere (a warm start from earlier results).

        By default a COMPLETE trial with the same parameters and value is returned instead of
        a second copy, so running the script that adds it again does not count it twice;
        ``skip_if_exists=False`` records it again (a repeated measurement).
        A follower (a DDP rank > 0) checks the point and records nothing: it returns the
        trial as rank 0 recorded it, or, before rank 0 has, the same unnumbered (-1)."""
        number, why = as_number(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"add() needs a finite number, got {why or number}")
        checked = self.space.validate(params)
        if self.follower:  # rank 0's record when it has one: the latest
            found = _recorded(reversed(self.trials), checked, number)
            unnumbered = FrozenTrial(-1, TrialState.COMPLETE, checked, number, origin=Origin.ADDED)
            return found or unnumbered
        if skip_if_exists:
            found = _recorded(self._view.values(), checked, number)
            if found is not None:
                return found
        self._store_changes()
        frozen = self._refresh(self.storage.add_trial(checked, number))
        self._emit("trial_finished", frozen)
        return frozen

    def ask(self) -> Trial:
        """Start a trial: queued parameters first, then a paused trial the pruner wants to go
        on (``pruner: {name: gp, resume: true}``: the same trial, running again from its last
        report, ``trial.resume_from`` set), else the sampler's suggestion.

        Raises :class:`SpaceExhausted` when the sampler has nothing left (a finished grid)."""
        if self.follower:
            return self._follow()
        self._store_changes()
        if self._search_to_store is not None:  # this open runs trials: store what searches
            self.storage.set_meta(self._search_to_store)
            self._search_to_store = None
        self._unfit = []
        popped = self.storage.pop_queue_into_trial(self._completed)
        for unfit in self._unfit:
            warnings.warn(unfit, UserWarning, stacklevel=2)
        if popped is None:
            resumed = self._resume()
            if resumed is not None:
                return resumed
        sampled = popped is None
        if popped is not None:
            number, params, _ = popped
        else:
            finished, pending = list(self._finished), list(self._pending.values())
            params = self.sampler.sample(self.space, finished, pending)
            note = getattr(self.sampler, "last_note", None)
            number = self.storage.create_trial(params, Origin.SAMPLER, note)
        self._refresh(number)
        trial = Trial(self, number, params)
        if self.dir is not None:
            run_dir = files.fresh_dir(self.trial_dir(number))
            files.write_text(
                run_dir / "params.yaml", yaml.safe_dump(params, sort_keys=False, allow_unicode=True)
            )
        self._announce(trial)
        explain = getattr(self.sampler, "explain", None)
        if sampled and explain and self.images_every and number % self.images_every == 0:
            if any(_wants_explanation(x, number) for x in self._listeners):
                t0 = time.monotonic()
                explanation = explain()
                if explanation is not None:
                    self._emit("sampler_explained", explanation, number)
                # the trial is handed out only now: the pictures' seconds are not its run's
                self.storage.add_waiting(number, time.monotonic() - t0)
        return trial

    def _resume(self) -> Trial | None:
        """The paused trial the pruner chose to run again, reopened; None when it chose none.
        Its folder is kept (its checkpoint, logs and curves are there)."""
        choose = getattr(self.pruner, "resume_choice", None)
        if choose is None:
            return None
        vain = self._resumed_in_vain() | self._failed_resume
        decision = choose(self._view.values(), skip=vain)  # no copy: it returns at once
        if decision is None or decision.forecast is None:
            return None
        number = decision.forecast.number
        if not self.storage.reopen_trial(number, decision.describe(self.metric)):
            return None
        frozen = self._refresh(number)
        trial = Trial(self, number, frozen.params, resume_from=max(frozen.intermediate))
        self._resumed_at[number] = max(frozen.intermediate)
        self._over.discard(number)
        self._announce(trial)
        self._emit("trial_decided", number, decision)
        return trial

    def tell(
        self,
        trial: Trial | int,
        value: Any = None,
        state: TrialState | str | None = None,
        error: str | None = None,
    ) -> FrozenTrial:
        """Finish a trial: COMPLETE with ``value``, or ``state="failed"``/``"pruned"``.

        ``value`` may also be an :class:`~torchtune_hp.outcome.Outcome` (what executors pass).
        Whatever ``value`` is, the trial ends: a value that is not a finite number leaves it
        FAILED with the reason stored; a PRUNED trial keeps its last reported value. Telling a
        trial that already ended changes nothing. A Trial that was told to stop
        (``trial.pruned``: ``should_prune()`` said so, or the Lightning callback stopped its
        training) is recorded PRUNED when no ``state`` is given, as ``optimize`` records it:
        ``tell(trial, trainer.callback_metrics["val_loss"])`` after a pruned ``fit()`` is not a
        COMPLETE run."""
        number = self._number_of(trial, "tell")
        if self.follower:
            return self.trial(number)
        stopped = getattr(trial, "pruned", False) or number in self._told_to_stop
        if state is None and not isinstance(value, Outcome) and stopped:
            state = TrialState.PRUNED
        keys = self._other_keys.pop(number, None)
        if keys and not self._view[number].intermediate:
            self.note(number, unreported(self.metric, keys))
        outcome = value if isinstance(value, Outcome) else self._outcome(value, state, error)
        failed = outcome.state is TrialState.FAILED and outcome.interruption is None
        if failed and number in self._resumed_at:
            outcome = self._paused_after_failure(number, outcome)
        if outcome.state is TrialState.PRUNED:
            val, _ = as_number(outcome.value)
            if val is None or not math.isfinite(val):
                steps = self._view[number].intermediate
                val = steps[max(steps)] if steps else None
            outcome = Outcome(TrialState.PRUNED, val)
        if self.storage.finish_trial(
            number, outcome.state, outcome.value, outcome.error, outcome.interruption
        ):
            frozen = self._refresh(number)
            self._emit("trial_finished", frozen)
            return frozen
        ended = self._view[number]
        if not isinstance(value, Outcome):  # the user's own tell: say what it did not do
            warnings.warn(
                f"tell(): trial {number} of study {self.name!r} had already ended "
                f"({_ended_as(ended)}); this tell changed nothing",
                UserWarning,
                stacklevel=2,
            )
        return ended

    def _paused_after_failure(self, number: int, outcome: Outcome) -> Outcome:
        """A paused trial whose resumed run failed (its checkpoint no longer loads into
        changed code, an out-of-memory) stays paused as it was: its curve up to the pause is
        still its result, where a FAILED record without a value lost it and told the sampler
        it was the worst. The failed run's reports after the pause are dropped (its
        checkpoint is from there), its error goes into the note, and it is not resumed again
        in this run."""
        at = self.storage.back_to_pause(number)
        at = self._resumed_at[number] if at is None else at
        self._failed_resume.add(number)
        error = (outcome.error or "").strip()
        last = headline(error) or "no error text"
        if error:
            self.note(number, f"its resumed run failed:\n{error}", warn=False)
        self.note(
            number,
            f"its resumed run failed ({last}): it stays paused at step {at}, its curve as it "
            "was, and is not resumed again in this run",
        )
        self._refresh(number)  # its reports as kept: tell() takes the last as its value
        return Outcome.pruned()

    def _number_of(self, trial: Any, call: str) -> int:
        """The number of ``trial`` (a Trial from ask(), or its number as any integer: a numpy
        one too), which must be one of this study's; a ValueError that says what was given
        otherwise, before anything changes."""
        if getattr(self, "_closed", False) and not self.follower:  # as ask() and tell() say
            raise self.storage.closed_error()
        if isinstance(trial, Trial) and trial.study is not self:
            raise ValueError(self._foreign(trial, call))
        number = getattr(trial, "number", trial)
        if isinstance(number, numbers.Integral) and not isinstance(number, bool):
            number = int(number)
            # a follower (a DDP rank > 0) knows only the trials of when it opened the study
            if number in self._view or (self.follower and number >= 0):
                return number
        numbered = (
            f"its trials are numbered 0 to {len(self._view) - 1}"
            if self._view
            else "it has no trials yet"
        )
        whole = isinstance(number, numbers.Integral) and not isinstance(number, bool)
        what = "no trial" if whole else "no trial numbered"  # 2.0: a number, not an integer
        raise ValueError(
            f"study {self.name!r} has {what} {describe(trial)} ({numbered}; {call}() takes a "
            "Trial from ask() or its number, an integer)"
        )

    def _foreign(self, trial: Trial, call: str) -> str:
        """Why a Trial asked from another Study object is refused: its number means another
        trial here (another study), or the trial was ended when this object took its study
        over (a notebook cell run again)."""
        other = trial.study
        same = self.dir is not None and other.dir is not None and Path(other.dir) == self.dir
        if same:
            return (
                f"{call}(): trial {trial.number} was asked from another Study object of study "
                f"{self.name!r} (an earlier opening): it ended when that one closed or this one "
                "took the study over (as interrupted, unless it had been told), so nothing is "
                "changed: ask() this Study for a new trial"
            )
        named = (
            f"another Study object, also named {self.name!r}"
            if other.name == self.name
            else f"study {other.name!r}, not from study {self.name!r}"
        )
        return (
            f"{call}(): trial {trial.number} was asked from {named}: nothing is changed (give "
            "each trial to the Study object it came from)"
        )

    def _outcome(self, value: Any, state: TrialState | str | None, error: str | None) -> Outcome:
        finished = ("complete", "pruned", "failed")
        known = state is None or isinstance(state, TrialState)
        if not known and not (isinstance(state, str) and state.lower() in finished):
            raise ValueError(f"tell(state={state!r}): the state is one of {', '.join(finished)}")
        st = TrialState(state.upper()) if isinstance(state, str) else state
        if st is TrialState.RUNNING:
            raise ValueError("tell() needs a finished state: COMPLETE, PRUNED or FAILED")
        if st is TrialState.FAILED:
            return Outcome.failed(error or "failed")
        if st is TrialState.PRUNED:
            return Outcome(TrialState.PRUNED, as_number(value)[0])
        return outcome_of_return(value, self.metric, source="the value given to tell()")

    def report(self, trial: Trial | int, value: Any, step: Any = None) -> None:
        """Record an intermediate value of a RUNNING trial (``step``: the epoch, say; by default
        the next after the last). A value that is not a number is skipped, and the trial's note
        says so once; NaN or inf (a diverging run) is recorded as the worst value there is
        (+inf when minimizing, -inf when maximizing), so the pruner stops it."""
        number = self._number_of(trial, "report")
        if self.follower:
            return
        current = self._view[number]
        if current.state is not TrialState.RUNNING:
            return
        val, why = as_number(value)
        if val is None:
            self.note(number, f"a report of {self.metric!r} was skipped: {why}")
            return
        if not math.isfinite(val):
            val = math.inf if self.mode == "min" else -math.inf
        done = current.intermediate
        s, _ = as_number(step)
        if s is None or not (math.isfinite(s) and 0 <= s <= MAX_STEP and s == int(s)):
            if step is not None:  # 2.5 taken as 2 would replace step 2's value
                self.note(
                    number,
                    f"a report's step {describe(step)} is not a step number (a whole number "
                    ">= 0): it is recorded as the next step",
                )
            s = next(reversed(done)) + 1 if done else 0  # steps are kept in order
        restart = int(s) in done and self._starts_over(number, int(s))
        if restart:
            self._over.add(number)  # said once per resume, whatever its checkpoint does next
            self.note(number, self._started_over(number))
        elif int(s) in done:  # a stuck step counter would keep the pruners from ever deciding
            self.note(
                number,
                "a step was reported more than once: the later value replaced the earlier "
                "(pruners count distinct steps)",
                warn=False,
            )
        # a run that trains from the start again: its earlier run's later reports go (its
        # state is gone), so a pause from here is recorded where its new checkpoint is
        self.storage.report(number, int(s), val, restart=restart)
        # The view's trial in step with its row, in O(1): reading the row back (all its
        # reports) made a trial's n reports cost O(n^2), minutes for a regex on every line.
        view = self._view[number]
        if restart:
            kept = {k: v for k, v in view.intermediate.items() if k <= int(s)}
            view = dataclasses.replace(view, intermediate=kept)
            self._remember(view)
        steps = view.intermediate
        late = int(s) not in steps and bool(steps) and int(s) < next(reversed(steps))
        steps[int(s)] = val
        if late:  # an earlier step reported after a later one: in step order, as stored
            self._remember(dataclasses.replace(view, intermediate=dict(sorted(steps.items()))))
        self._emit("trial_reported", number, int(s), val)

    def reported_other(self, trial: Trial | int, values: Mapping[str, Any]) -> None:
        """``torchtune_hp.report()`` named only other values than the metric: kept, so the
        trial's end can say so when the pruner never saw one of its reports."""
        number = self._number_of(trial, "reported_other")
        self._other_keys.setdefault(number, set()).update(map(str, values))

    def _resumed_in_vain(self) -> set[int]:
        """The paused trials paused again at the step they were resumed at, with no report
        after it: resumed again they would only repeat that (a run that trains from the
        start, or is stopped at once on each resume), and the study would never end. They
        stay paused (in this run: the driver keeps what it resumed in memory), and each one's
        note says why."""
        vain = set()
        for number, at in self._resumed_at.items():
            trial = self._view.get(number)
            if (
                trial is None
                or trial.state is not TrialState.PRUNED
                or number in self._failed_resume
            ):
                continue
            if trial.intermediate and max(trial.intermediate) <= at:
                vain.add(number)
                last = max(trial.intermediate)
                why = (
                    f"paused again at step {at}, where it had been resumed, with no report after it"
                    if last == at and number not in self._over
                    else f"resumed at step {at}, it trained from the start again and was paused "
                    f"at step {last}"
                )
                self.note(
                    number,
                    f"{why}: it is not resumed again in this run (it would only repeat that)",
                    warn=False,
                )
        return vain

    def _starts_over(self, number: int, step: int) -> bool:
        """Whether a report at ``step``, reported before, shows a resumed trial training from
        the start: a step before the one it paused at (a run that loads its state and
        validates again reports the paused step itself, which is not that)."""
        return number not in self._over and step < self._resumed_at.get(number, -1)

    def _started_over(self, number: int) -> str:
        """Why a resumed trial reports a step it had reported before its pause: its run
        trained from the start again (the compute of its first run spent twice), which the
        trial's note and a warning say instead of a quiet overwrite of its curve."""
        why = "the objective does not resume from its saved state"
        if self.dir is not None:
            checkpoint = self.trial_dir(number) / PAUSE_CHECKPOINT
            why = (
                f"its {checkpoint} is there: does the objective pass trial.ckpt_path to "
                "Trainer.fit (or load trial.checkpoint_path itself)?"
                if checkpoint.is_file()
                else f"no {checkpoint} was found (deleted, or never saved: a script saves its "
                "state there when told to stop)"
            )
        return (
            f"resumed after step {self._resumed_at[number]}, it reported its earlier steps "
            "again: it trained from the start instead of going on (its new curve replaces "
            f"the earlier from there, the earlier run's later steps dropped); {why}"
        )

    def note(self, number: int, text: str, warn: bool = True) -> None:
        """Add ``text`` to a trial's note, once (``trials`` shows it); ``warn``: also as a
        RuntimeWarning (for what went wrong, not for a pruner's reasons)."""
        if (number, text) in self._noted or self.follower:
            return
        self._noted.add((number, text))
        self.storage.add_note(number, text)
        self._refresh(number)
        if warn:
            warnings.warn(f"trial {number}: {text}", RuntimeWarning, stacklevel=3)

    def should_prune(self, trial: Trial | int) -> bool:
        """Whether the pruner says to stop the trial now, from the values reported so far.
        Once it says so, the trial ends PRUNED whatever ``tell`` gives it (a Trial's
        ``trial.pruned`` is set: its objective's return ends it PRUNED too)."""
        number = self._number_of(trial, "should_prune")
        if self.follower:
            return False
        me = self._view[number]
        others = [t for t in self._view.values() if t.number != number]
        stop = bool(self.pruner.prune(me, others, self.mode))
        decision = getattr(self.pruner, "last_decision", None)
        if decision is not None:
            if stop:
                self.note(number, decision.describe(self.metric), warn=False)
            self._emit("trial_decided", number, decision)
        elif stop and diverged(me):  # every rule stops it at once, without a decision to show
            step = max(me.intermediate)
            self.note(number, f"stopped: its report at step {step} was NaN or inf", warn=False)
        resumes = getattr(self.pruner, "resume", False) and self.dir is not None
        if stop and me.intermediate and resumes:
            # told to pause: it saves its state now, which a stop may yet come before
            self.storage.told_to_pause(number, max(me.intermediate), since=time.time())
        if stop:  # told to stop: tell() records it PRUNED (a Trial's objective returns too)
            self._told_to_stop.add(number)
            if isinstance(trial, Trial):
                trial.pruned = True
        return stop

    def saved_at(self, trial: Trial | int, step: int) -> None:
        """A paused trial running again has saved its state at ``step``: told to pause there,
        or a script read by ``metric_regex``, which hears no verdict and saves every epoch. A
        stop before it ends (Ctrl-C, a dead driver) pauses it again there, its later reports
        dropped; nothing for a trial that is no resumed one."""
        number = self._number_of(trial, "saved_at")
        if not self.follower:
            self.storage.told_to_pause(number, step)

    def waited(self, trial: Trial | int, seconds: float) -> None:
        """A trial waited ``seconds`` after it was asked for before it started (a Ray cluster
        that could not place it yet): left out of its duration, as its paused time is."""
        number = self._number_of(trial, "waited")
        if not self.follower:
            self.storage.add_waiting(number, seconds)
            self._refresh(number)

    def run_again(self, trial: Trial, why: str) -> None:
        """``trial`` runs again from where it started (its process was lost): the reports of
        the lost attempt, after ``trial.resume_from`` (all on a first run), are dropped, so
        the new attempt's curve is its own and the pruners' rungs count its reports; ``why``
        goes to its note with how many were dropped."""
        if self.follower:
            return
        dropped = self.storage.drop_reports(trial.number, trial.resume_from)
        if dropped:
            why += f"; the lost attempt's {dropped} report(s) were dropped"
        self._refresh(trial.number)
        self.note(trial.number, why)

    def record_process(self, trial: Trial | int, process: dict[str, Any]) -> None:
        """Where a trial's process group runs, so a resumed driver can make sure it is gone."""
        number = self._number_of(trial, "record_process")
        self.storage.set_process(number, process)

    def interrupted(self, reason: str = "", kind: Interruption = Interruption.STOPPED) -> None:
        """After a stop (Ctrl-C, SIGTERM, SIGHUP) or a driver error: the running trials become
        FAILED (interrupted) and their parameters are queued for the next run."""
        self.stopped = True
        if self.follower:
            return
        reason = reason or f"{INTERRUPTED} by the user (KeyboardInterrupt)"
        self._recover(reason, kind)

    def _recover(self, reason: str, kind: Interruption, found_later: bool = False) -> None:
        """Mark RUNNING trials FAILED (``kind``), first making sure no process of theirs still
        runs: the resumed study must never run a trial whose old process still trains.
        ``found_later``: they were left by a driver that died (see ``recover_running``)."""
        for process in self.storage.running_processes():  # first: a driver killed while
            procs.end_group(process)  # it waits here still finds the records next time
        for number, (since, before) in self.storage.unsaved_pauses().items():
            if not self._saved_since(number, since):  # stopped before it saved its state
                self.storage.told_to_pause(number, before)  # paused where it was saved before
        for number in self.storage.recover_running(reason, kind, found_later):
            self._resumed_at.pop(number, None)  # paused again where it was: not in vain
            frozen = self._refresh(number)
            self.recovered.append(number)
            self._emit("trial_finished", frozen)

    def _saved_since(self, number: int, since: float) -> bool:
        """Whether a trial told to pause at ``since`` has saved its state since: its
        ``pause.ckpt`` (``trial.checkpoint_path``, as the driver has it: a Ray trial's once it
        was copied back) is that new. A stop that came first leaves the earlier one, and the
        trial is paused where that was saved, not where it was told."""
        assert self.dir is not None
        try:
            return (self.trial_dir(number) / PAUSE_CHECKPOINT).stat().st_mtime >= since
        except OSError:
            return False

    # -- DDP followers -----------------------------------------------------------------------
    def _announce(self, trial: Trial) -> None:
        """A trial starts: the driver records which (and from where: a paused trial runs
        again from ``resume_from``) for its followers, then tells its subscribers. The record
        is a start, not a trial number: a resumed trial has a lower number than the last."""
        self._told_to_stop.discard(trial.number)  # a paused trial runs again
        if self.dir is not None:
            start = {"id": uuid.uuid4().hex, "number": trial.number}
            self.storage.set_meta({"started": {**start, "resume_from": trial.resume_from}})
        self._emit("trial_started", trial)

    def _follow(self, poll_s: float = 0.05, timeout_s: float = 600.0) -> Trial:
        """A follower's ask(): the trial rank 0 runs now (the first call) or the next one it
        starts, a paused trial it runs again included (with the same ``resume_from``, so every
        rank loads the same checkpoint); SpaceExhausted once rank 0 is gone or its driver loop
        has ended."""
        assert self.dir is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = files.StudyLock.is_held(self.dir)  # before reading: a driver alive now
            self._saw_driver = self._saw_driver or held
            meta = self.storage.get_meta()
            started = meta.get("started")
            nxt = None if started is None else self.storage.trial(started["number"])
            if nxt is not None and self._followed is None:
                if not held or nxt.state is not TrialState.RUNNING:
                    nxt = None  # the first call joins a trial a driver runs now
            if nxt is not None and (self._followed is None or started["id"] != self._followed[0]):
                self._followed = (started["id"], nxt.number)
                return Trial(self, nxt.number, nxt.params, resume_from=started["resume_from"])
            loop = meta.get("loop") or {}
            if (self._saw_driver and not held) or loop.get("state") == "ended":
                raise SpaceExhausted("rank 0 ended the study")
            time.sleep(poll_s)
        raise TimeoutError(
            f"{self.dir}: rank 0 started no new trial within {timeout_s:.0f} s "
            "(this process follows rank 0 of a distributed job)"
        )

    def _after_rank_0(self, poll_s: float = 0.05, timeout_s: float = 60.0) -> list[FrozenTrial]:
        """A closing follower's trials, once rank 0 has told the trial they last trained
        (or is gone, or ``timeout_s`` passed): an ask/tell script closes as soon as its own
        ``tell``, which records nothing, returns, and reads ``best_params`` next."""
        assert self.dir is not None
        deadline = time.monotonic() + timeout_s
        while self._followed is not None and time.monotonic() < deadline:
            if not files.StudyLock.is_held(self.dir):
                break
            if self.storage.trial(self._followed[1]).state.finished:
                break
            time.sleep(poll_s)
        return self.storage.trials()

    def loop_state(self, state: str) -> None:
        """``running`` or ``ended``: followers stop following once rank 0's loop has ended."""
        if self._lock is not None:  # first: a failing write below must not leave it set
            self._lock.busy = state == "running"  # a loop's study is never handed over
        if not self.follower and self.dir is not None:
            self.storage.set_meta({"loop": {"state": state, "at": utcnow().isoformat()}})

    def heartbeat(self) -> None:
        """The trial loop is alive, and with it the trials it runs (see
        :meth:`~torchtune_hp.storage.Storage.still_running`): a dead driver's trial then ends
        where it was last known to run, within a heartbeat, also when it never reported."""
        if not self.follower and self.dir is not None:
            self.storage.still_running()

    # -- the loop ----------------------------------------------------------------------------
    def optimize(
        self,
        objective: Callable[[Trial], Any],
        n_trials: int,
        callbacks: Sequence[Callable[[Study, FrozenTrial], None]] = (),
        fail_fast: int = 3,
        timeout: float | str | datetime.timedelta | None = None,
    ) -> None:
        """Run ``objective`` in this process until the study holds ``n_trials`` finished trials
        (earlier runs included) or the sampler is exhausted. ``timeout`` (seconds, ``"8h"``,
        ``"30m"``, a ``timedelta``): no trial starts after it, counted from this call; the
        running trial ends as it would, and a :class:`~torchtune_hp.errors.TimeLimitReached`
        warning says how many trials the study holds. A raising objective fails only its
        trial (the traceback is stored); when the first ``fail_fast`` trials all fail with the
        same error the study stops with :class:`~torchtune_hp.errors.StudyStopped` (0: never).
        Ctrl-C (or SIGTERM, SIGHUP) marks the running trial FAILED (interrupted), queues its
        parameters for the next run and re-raises ``KeyboardInterrupt``."""
        from torchtune_hp.executors.inline import InlineExecutor
        from torchtune_hp.executors.loop import run_trials

        run_trials(self, InlineExecutor(objective), n_trials, callbacks, fail_fast, timeout)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self._record_unanswered()
            self._emit("study_closed")
            if self.follower:
                with contextlib.suppress(StorageError):
                    self._as_closed = self._after_rank_0()
        finally:
            self._listeners.clear()
            try:
                if hasattr(self, "storage"):
                    self.storage.close()
            finally:  # the folder is freed whatever closing the database did
                if self._lock is not None:
                    self._lock.release()

    def _record_unanswered(self) -> None:
        """Trials this object asked and nobody told: interrupted (stopped), to run again next
        time. Only once driving (trials a dead driver left are recorded as died when the study
        opens), and never in place of the error that is ending the program."""
        if not self._driving or self.follower:
            return
        if any(t.state is TrialState.RUNNING for t in self._view.values()):
            try:
                self._recover(
                    f"{INTERRUPTED}: the study was closed before this trial was told; its "
                    "parameters run again next time",
                    Interruption.STOPPED,
                )
            except Exception as e:  # e.g. a full disk: the next open records them as died
                warnings.warn(f"study {self.name!r}: closing: {e}", RuntimeWarning, stacklevel=3)

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

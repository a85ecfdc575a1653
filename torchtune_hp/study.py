"""The study: the driver loop that asks the sampler, runs the objective and records results.

``Study(name, space, logdir="logs")`` opens ``logs/<name>/study.db`` and resumes it when it
exists: finished trials are kept, trials left RUNNING by a dead process are marked FAILED
(interrupted) and their parameters tried once more, and ``n_trials`` is the study's total, so
running ``optimize(f, n_trials=30)`` twice still ends at 30.

In a distributed training job (Lightning's ``strategy="ddp"`` runs the script again for every
rank but 0), a study opened on another rank than 0 is a *follower*: it reads the database
without taking the driver's lock, its ``ask()`` returns the trial rank 0 is running, and its
``tell``/``report`` write nothing. So the same script tunes a DDP model unchanged: every rank
trains the same trial, rank 0 alone records it, and the callback shares the prune decision.

TensorBoard: each trial's run and the study-level run are written as the trials progress (see
:mod:`torchtune_hp.board`); ``tensorboard=False`` turns that off.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from torchtune_hp.distributed import is_follower_rank
from torchtune_hp.pruners import Pruner, make_pruner
from torchtune_hp.remote import CURRENT
from torchtune_hp.samplers import Sampler, SpaceExhausted, make_sampler
from torchtune_hp.space import Param, Space, space_diff
from torchtune_hp.storage import Storage
from torchtune_hp.trial import FrozenTrial, Origin, Trial, TrialPruned, TrialState

if TYPE_CHECKING:
    from torchtune_hp.board import StudyBoard

MODES = ("min", "max")
INTERRUPTED = "interrupted"


class StudyMismatch(ValueError):
    """An existing study was opened with another space, metric or mode."""


def to_float(value: Any) -> float:
    """Objective values as plain floats: Python numbers, 0-d tensors and NumPy scalars."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the objective must return a number, got {type(value).__name__}")
    return float(value)


def best_of(trials: Sequence[FrozenTrial], mode: str) -> FrozenTrial | None:
    """The COMPLETE trial with the lowest (``min``) or highest (``max``) value; ties go to the
    earlier trial."""
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    sign = 1.0 if mode == "min" else -1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number), default=None)


def _wait_for_database(path: Path, timeout_s: float = 60.0) -> Storage:
    """A follower opens rank 0's database read-only, once rank 0 has created it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            storage = Storage(path, read_only=True)
            if storage.get_meta():
                return storage
            storage.close()
        except (FileNotFoundError, sqlite3.OperationalError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank 0 did not create the study within {timeout_s:.0f} s")
        time.sleep(0.1)


class Study:
    """A named search over ``space``; see the module docstring for what resuming does."""

    def __init__(
        self,
        name: str,
        space: Space | Mapping[str, Param],
        sampler: str | Sampler = "random",
        seed: int | None = None,
        logdir: str | Path | None = "logs",
        mode: str = "min",
        metric: str = "value",
        sampler_options: Mapping[str, Any] | None = None,
        pruner: str | Pruner = "none",
        pruner_options: Mapping[str, Any] | None = None,
        tensorboard: bool = True,
        images_every: int = 5,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(images_every, bool) or not isinstance(images_every, int) or images_every < 0:
            raise ValueError(f"images_every must be an integer >= 0, got {images_every!r}")
        self.name = name
        self.space = Space.of(space)
        self.mode = mode
        self.metric = metric
        self.dir = None if logdir is None else Path(logdir) / name
        self.follower = self.dir is not None and is_follower_rank()
        self._followed: int | None = None  # the last trial a follower returned from ask()
        self._target: int | None = None  # n_trials of the running optimize(), for followers
        if self.follower:
            assert self.dir is not None
            self.storage = _wait_for_database(self.dir / "study.db")
        else:
            self.storage = Storage(None if self.dir is None else self.dir / "study.db")
        self.board: StudyBoard | None = None
        self.images_every = images_every
        try:
            self.seed = self._load_or_init_meta(seed)
            self.sampler: Sampler = (
                make_sampler(sampler, self.seed, dict(sampler_options or {}), mode)
                if isinstance(sampler, str)
                else sampler
            )
            if getattr(self.sampler, "mode", mode) != mode:
                raise ValueError(
                    f"the sampler minimizes/maximizes ({self.sampler.mode!r}) "  # type: ignore[attr-defined]
                    f"unlike the study (mode={mode!r}); give both the same mode"
                )
            self.pruner: Pruner = (
                make_pruner(pruner, dict(pruner_options or {}))
                if isinstance(pruner, str)
                else pruner
            )
        except BaseException:
            self.storage.close()
            raise
        self.recovered: list[int] = []
        if self.follower:
            return
        if tensorboard and self.dir is not None:
            from torchtune_hp.board import StudyBoard  # TensorBoard loads only when used

            self.board = StudyBoard(self.dir, self.space, metric, mode)
            if self._created:
                self.board.write_experiment(f"torchtune_hp study {name!r}")
        self.recovered = self.storage.recover_running(
            f"{INTERRUPTED}: the process running this trial died; its parameters are retried once"
        )
        if self.recovered:
            warnings.warn(
                f"study {name!r}: trial(s) {self.recovered} were left RUNNING by a process that "
                "died; marked FAILED and queued to run again once",
                stacklevel=2,
            )

    def _load_or_init_meta(self, seed: int | None) -> int:
        meta = self.storage.get_meta()
        self._created = not meta
        if self.follower:
            return int(meta["seed"])
        if not meta:
            seed = random.randrange(2**31) if seed is None else seed
            self.storage.set_meta(
                {
                    "name": self.name,
                    "space": self.space.to_dict(),
                    "metric": self.metric,
                    "mode": self.mode,
                    "seed": seed,
                }
            )
            return seed
        problems = space_diff(Space.from_dict(meta["space"]), self.space)
        for key in ("metric", "mode"):
            if meta[key] != getattr(self, key):
                problems.append(
                    f"{key} changed: stored {meta[key]!r}, given {getattr(self, key)!r}"
                )
        if problems:
            where = self.dir if self.dir is not None else self.name
            raise StudyMismatch(
                f"{where}: the existing study differs from the one given: "
                + "; ".join(problems)
                + ". Use another study name or logdir to start a new study."
            )
        if seed is not None and seed != meta["seed"]:
            self.storage.set_meta({"seed": seed})
            return seed
        return int(meta["seed"])

    # -- reading -----------------------------------------------------------------------------
    @property
    def trials(self) -> list[FrozenTrial]:
        return self.storage.trials()

    @property
    def n_finished(self) -> int:
        """Trials that count toward ``n_trials`` (interrupted ones do not)."""
        return sum(t.counts for t in self.trials)

    @property
    def best_trial(self) -> FrozenTrial:
        best = best_of(self.trials, self.mode)
        if best is None:
            raise ValueError(f"study {self.name!r} has no COMPLETE trial yet")
        return best

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float:
        value = self.best_trial.value
        assert value is not None
        return value

    def importance(self) -> dict[str, float]:
        """Each tunable hyperparameter's relevance (shares summing to 1), from the ARD
        lengthscales of a GP fit to the finished trials, whatever the sampler. On
        f(x, y) = g(x) + 0.01 h(y) it says that x matters and y does not."""
        from torchtune_hp.samplers.gp import importance  # GPyTorch loads only when asked

        return importance(self.space, self.trials, self.mode)

    # -- ask / tell --------------------------------------------------------------------------
    def enqueue(self, params: Mapping[str, Any]) -> None:
        """Make a following ``ask()`` return ``params`` (e.g. a known-good default first)."""
        self.storage.push_queue(self.space.validate(params), Origin.ENQUEUED)

    def add(self, params: Mapping[str, Any], value: float) -> FrozenTrial:
        """Record a trial evaluated elsewhere (a warm start from earlier results)."""
        value = to_float(value)
        if not math.isfinite(value):
            raise ValueError(f"add() needs a finite value, got {value}")
        number = self.storage.add_trial(self.space.validate(params), value)
        return self._frozen(number)

    def ask(self) -> Trial:
        """Start a trial: queued parameters first, else the sampler's suggestion.

        Raises :class:`SpaceExhausted` when the sampler has nothing left (a finished grid)."""
        if self.follower:
            return self._follow()
        popped = self.storage.pop_queue_into_trial()
        sampled = popped is None
        if popped is not None:
            number, params, _ = popped
        else:
            trials = self.trials
            finished = [t for t in trials if t.state.finished]
            pending = [t for t in trials if not t.state.finished]
            params = self.sampler.sample(self.space, finished, pending)
            note = getattr(self.sampler, "last_note", None)
            number = self.storage.create_trial(params, Origin.SAMPLER, note)
        trial = Trial(self, number, params)
        if self.dir is not None:
            trial_dir = self.trial_dir(number)
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if self.board is not None:
            self.board.trial_started(number, params)
            explain = getattr(self.sampler, "explain", None)
            if sampled and explain and self.images_every and number % self.images_every == 0:
                explanation = explain()
                if explanation is not None:
                    self.board.explained(explanation, number)
        return trial

    def _follow(self, poll_s: float = 0.05, timeout_s: float = 600.0) -> Trial:
        """A follower's ask(): the trial rank 0 runs now (the first call) or the next one it
        starts; SpaceExhausted once rank 0's study holds ``n_trials``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            trials = self.trials
            if self._followed is None:
                running = [t for t in trials if t.state is TrialState.RUNNING]
                nxt = running[-1] if running else None
            else:
                nxt = next((t for t in trials if t.number > self._followed), None)
            if nxt is not None:
                self._followed = nxt.number
                return Trial(self, nxt.number, nxt.params)
            if self._target is not None and sum(t.counts for t in trials) >= self._target:
                raise SpaceExhausted("rank 0 finished the study")
            time.sleep(poll_s)
        raise TimeoutError(
            f"{self.dir}: rank 0 started no new trial within {timeout_s:.0f} s "
            "(this process follows rank 0 of a distributed job)"
        )

    def tell(
        self,
        trial: Trial | int,
        value: Any = None,
        state: TrialState | str | None = None,
        error: str | None = None,
    ) -> FrozenTrial:
        """Finish a trial: COMPLETE with ``value``, or ``state="failed"``/``"pruned"``.

        A NaN or infinite value leaves the trial FAILED with the reason stored; a PRUNED trial
        keeps its last reported value."""
        number = trial if isinstance(trial, int) else trial.number
        if self.follower:
            return self._frozen(number)
        st = TrialState(state.upper()) if isinstance(state, str) else state
        st = st or TrialState.COMPLETE
        if st is TrialState.RUNNING:
            raise ValueError("tell() needs a finished state: COMPLETE, PRUNED or FAILED")
        val = None if value is None else to_float(value)
        if st is TrialState.COMPLETE:
            if val is None:
                raise ValueError("tell() of a COMPLETE trial needs a value")
            if not math.isfinite(val):
                st, error, val = TrialState.FAILED, f"the objective returned {val}", None
        elif st is TrialState.PRUNED and val is None:
            steps = self._frozen(number).intermediate
            val = steps[max(steps)] if steps else None
        elif st is TrialState.FAILED:
            val = None
        self.storage.finish_trial(number, st, val, error)
        frozen = self._frozen(number)
        if self.board is not None:
            best = best_of(self.trials, self.mode)
            self.board.trial_finished(frozen, None if best is None else best.value)
        return frozen

    def _report(self, trial: Trial, value: float, step: int) -> None:
        if self.follower:
            return
        self.storage.report(trial.number, step, value)
        if self.board is not None:
            self.board.reported(trial.number, step, value)

    def _should_prune(self, trial: Trial) -> bool:
        if self.follower:
            return False
        trials = self.trials
        me = next(t for t in trials if t.number == trial.number)
        return self.pruner.prune(me, [t for t in trials if t.number != trial.number], self.mode)

    def _frozen(self, number: int) -> FrozenTrial:
        return next(t for t in self.trials if t.number == number)

    def trial_dir(self, number: int) -> Path:
        if self.dir is None:
            raise ValueError("an in-memory study (logdir=None) has no trial folders")
        return self.dir / f"trial_{number:04d}"

    # -- the loop ----------------------------------------------------------------------------
    def optimize(
        self,
        objective: Callable[[Trial], Any],
        n_trials: int,
        callbacks: Sequence[Callable[[Study, FrozenTrial], None]] = (),
    ) -> None:
        """Run ``objective`` until the study holds ``n_trials`` finished trials (earlier runs
        included) or the sampler is exhausted. A raising objective fails only its trial (the
        traceback is stored); Ctrl-C marks the running trial FAILED (interrupted), queues its
        parameters for the next run and re-raises ``KeyboardInterrupt``."""
        self._target = n_trials
        try:
            while self.follower or self.n_finished < n_trials:
                try:
                    trial = self.ask()
                except SpaceExhausted:
                    return
                frozen = self._run_one(objective, trial)
                for cb in callbacks:
                    cb(self, frozen)
        except KeyboardInterrupt:  # wherever it lands: in the objective, the sampler, a tell
            self.interrupted()
            raise

    def interrupted(self) -> None:
        """After Ctrl-C: the running trials become FAILED (interrupted), their parameters are
        queued for the next run, and their TensorBoard sessions end."""
        if not self.follower:
            self.storage.recover_running(f"{INTERRUPTED} by the user (KeyboardInterrupt)")
        if self.board is not None:
            self.board.close()

    def _run_one(self, objective: Callable[[Trial], Any], trial: Trial) -> FrozenTrial:
        token = CURRENT.set(trial)  # for torchtune_hp.report() and TuneCallback()
        try:
            value = objective(trial)
        except TrialPruned:
            return self.tell(trial, state=TrialState.PRUNED)
        except Exception as e:
            tb = traceback.format_exc()
            warnings.warn(f"trial {trial.number} failed: {type(e).__name__}: {e}", stacklevel=3)
            return self.tell(trial, state=TrialState.FAILED, error=tb)
        finally:
            CURRENT.reset(token)
        if trial.pruned:  # the callback stopped training; the objective returned normally
            return self.tell(trial, state=TrialState.PRUNED)
        if isinstance(value, Mapping):
            if self.metric not in value:
                return self.tell(
                    trial,
                    state=TrialState.FAILED,
                    error=f"the objective returned keys {sorted(value)}, not the metric "
                    f"{self.metric!r}",
                )
            value = value[self.metric]
        try:
            return self.tell(trial, value)
        except TypeError as e:
            return self.tell(trial, state=TrialState.FAILED, error=str(e))

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        self.storage.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

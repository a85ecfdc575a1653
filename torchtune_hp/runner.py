"""Run a recipe: check it, open (or resume) its study, pick its executor, drive the trials.

Everything that can be checked before the first trial is checked before the study is opened
(the objective imports or its command exists, its templates fill in, the devices exist), so a
mistake costs no trial and no file.
"""

from __future__ import annotations

import os
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from torchtune_hp import files
from torchtune_hp.display import counted
from torchtune_hp.errors import ConfigError, StorageError, StudyMismatch, StudyStopped
from torchtune_hp.executors import Executor
from torchtune_hp.executors.devices import Slot, device_slots, driver_gpus
from torchtune_hp.executors.inline import InlineExecutor
from torchtune_hp.executors.loop import run_trials
from torchtune_hp.launch import check_objective, launch_spec
from torchtune_hp.progress import ProgressView
from torchtune_hp.recipe import Recipe, blame_overrides
from torchtune_hp.record import StudyRecord, read_stored
from torchtune_hp.storage import holds_nothing
from torchtune_hp.study import Study, other_search, refuse_other
from torchtune_hp.trial import Trial, TrialState


def open_study(recipe: Recipe) -> Study:
    """The recipe's study, opened or started; a stored study that refuses the recipe says
    which of the recipe's keys differ."""
    m = recipe.model
    try:
        return Study(
            m.study.name,
            recipe.space,
            sampler=m.sampler.name,
            seed=m.study.seed,
            logdir=Path(m.logdir),
            mode=m.study.mode,
            metric=m.study.metric,
            sampler_options=m.sampler.options,
            pruner=m.pruner.name,
            pruner_options=m.pruner.options,
            tensorboard=m.tensorboard.enabled,
            images_every=m.tensorboard.images_every,
        )
    except StudyMismatch as e:
        raise recipe.mismatch(e) from None


def in_process(recipe: Recipe) -> bool:
    """A function objective with one local worker runs in the driver's process (fast,
    debuggable); commands, several workers, Ray and a ``timeout`` (only a process can be
    killed when it runs too long) run trials as processes."""
    ex, obj = recipe.model.executor, recipe.model.objective
    return (
        obj.function is not None and obj.timeout is None and ex.workers == 1 and ex.name == "local"
    )


def check_executor(recipe: Recipe) -> None:
    """Keys of the other kind of executor are a mistake, not something to ignore."""
    ex = recipe.model.executor
    for key, kind in ex.only_for.items():
        hint = " (on Ray, ask for GPUs with resources_per_trial.gpu)" if kind == "local" else ""
        raise ConfigError(
            recipe.path,
            f"executor.{key}",
            f"applies to executor.name: {kind} only, and this recipe runs on {ex.name!r}{hint}",
        )


def slots_of(recipe: Recipe) -> list[Slot]:
    ex = recipe.model.executor
    if ex.name != "local":
        return []
    try:
        slots = device_slots(ex.devices, ex.workers, ex.trials_per_device, ex.devices_per_trial)
    except ValueError as e:
        raise ConfigError(recipe.path, "executor.devices", str(e)) from None
    if isinstance(ex.devices, list) and not driver_gpus():
        warnings.warn(
            f"executor.devices: {ex.devices} names GPUs, but none is visible here; each trial is "
            "told it has one (trial.accelerator == 'gpu'; the built-in recipes see none and use "
            "the CPU); use devices: auto to fall back to the CPU",
            stacklevel=2,
        )
    if len(slots) < ex.workers:
        warnings.warn(
            f"executor.workers: {ex.workers}, but the devices make {counted(len(slots), 'slot')} "
            f"({ex.devices}, trials_per_device {ex.trials_per_device}, devices_per_trial "
            f"{ex.devices_per_trial}): {counted(len(slots), 'trial')} at once",
            stacklevel=2,
        )
    return slots


def connect_cluster(recipe: Recipe) -> None:
    """Join the recipe's Ray cluster (``executor.name: ray``, ``address: local`` starts one
    for the study), shipping the recipe's folder to its nodes without the study's logs."""
    from torchtune_hp.executors.ray_pool import connect

    ex = recipe.model.executor
    folder = files.absolute(recipe.path.parent)
    excludes = [".git/", "__pycache__/", "lightning_logs/"]
    logdir = files.absolute(Path(recipe.model.logdir))
    if logdir.is_relative_to(folder) and logdir != folder:
        excludes.append("/" + logdir.relative_to(folder).as_posix() + "/")
    _say_unshipped(recipe, folder, excludes)
    resources = ex.resources_per_trial.model_dump()
    connect(ex.address, recipe.path, folder, excludes, resources)


def _say_unshipped(recipe: Recipe, folder: Path, excludes: list[str]) -> None:
    """Warn of a path in the command (``--data data``) that Ray leaves out of the folder it
    ships (a ``.gitignore``d ``data/``): the trial reads it where it is on the driver's
    machine, which another node lacks (it was given a path under the shipped folder that
    did not exist there)."""
    from torchtune_hp.executors.ray_pool import unshipped
    from torchtune_hp.launch import resolve_command

    command = recipe.model.objective.command or []
    paths = {
        Path(e)
        for e in resolve_command(list(command), folder)
        if os.path.isabs(e) and Path(e).is_relative_to(folder) and os.path.lexists(e)
    }
    for path, rule in sorted(unshipped(folder, excludes, sorted(paths)).items()):
        warnings.warn(
            f"{recipe.path}: objective.command: {path.relative_to(folder)} is left out of the "
            f"folder Ray ships to its nodes ({rule} names it): a trial reads {path} where it "
            "is, which only nodes that share this file system have (take it out of that "
            "file, or keep it where every node finds it)",
            UserWarning,
            stacklevel=3,
        )


def make_executor(recipe: Recipe, study: Study, slots: list[Slot]) -> Executor:
    ex = recipe.model.executor
    if ex.name == "ray":
        from torchtune_hp.executors.ray_pool import RayExecutor

        resources = ex.resources_per_trial.model_dump()
        return RayExecutor(study, launch_spec(recipe), ex.workers, resources, address=ex.address)
    if in_process(recipe):
        objective, train = recipe.objective(), recipe.model.train

        def call(trial: Trial) -> Any:
            return objective(trial, **train)

        return InlineExecutor(call, devices=slots[0].positions, exit_fails_trial=True)
    from torchtune_hp.executors.pool import ProcessPool

    return ProcessPool(study, launch_spec(recipe), recipe.model.executor.workers, slots)


def run_recipe(recipe: Recipe, before_open: Callable[[], None] | None = None) -> Study:
    """Run until the study holds ``study.trials`` finished trials. The resolved recipe is
    written beside the database (the latest run's, overrides applied). ``before_open``
    (``--fresh``: the old study moved aside) runs once every check has passed, so a run
    refused as bad input leaves the disk as it was."""
    m = recipe.model
    check_objective(recipe)
    with blame_overrides(recipe):
        check_executor(recipe)
        slots = slots_of(recipe)
        if m.executor.name == "ray":
            connect_cluster(recipe)  # before the study opens: a cluster problem costs no trial
    executor: Executor | None = None
    try:
        if before_open is not None:
            before_open()
        study = open_study(recipe)
    except BaseException:
        disconnect(recipe)
        raise
    try:
        assert study.dir is not None
        if study.n_finished >= m.study.trials:  # the record stays the run's that ran trials
            warnings.warn(nothing_to_run(study, m.study.trials), stacklevel=2)
        else:
            record = f"# resolved from {recipe.path}\n{recipe.resolved_yaml}"
            folder = study.dir  # deleted as the study opens: made again, as a running one is
            files.made_again_if_deleted(
                folder, lambda: files.write_text(folder / "recipe.yaml", record)
            )
        executor = make_executor(recipe, study, slots)
        with ProgressView(study, m.study.trials):
            run_trials(
                study,
                executor,
                m.study.trials,
                fail_fast=m.study.fail_fast,
                timeout=m.study.timeout,
            )
    except StudyStopped as e:
        study.close()
        where = shlex.quote(str(study.dir))  # pasted back into a shell: spaces, quotes
        raise StudyStopped(
            f"{e}. {after_a_fix(study, m.study.trials)}; see every trial's error with: "
            f"torchtune-hp trials {where}"
        ) from None
    except BaseException:
        study.close()
        raise
    finally:
        if executor is not None:
            executor.close()
        else:
            disconnect(recipe)
    return study


class HeldStudy(Protocol):
    """What the messages below need of a study: an open :class:`Study`, or one read from its
    folder (:class:`~torchtune_hp.record.StudyRecord`)."""

    @property
    def name(self) -> str: ...
    @property
    def dir(self) -> Path | None: ...
    @property
    def n_finished(self) -> int: ...


def more_trials(study: HeldStudy, trials: int) -> int:
    """What to ask for to run more of a study that holds its ``trials``: one number, whichever
    message suggests it."""
    return max(trials, study.n_finished) + 10


def after_a_fix(study: HeldStudy, trials: int) -> str:
    """How to go on once whatever failed the trials is fixed. Failed trials count toward
    ``study.trials`` (as in Optuna), so a study that used them all needs more, not a rerun."""
    if study.n_finished < trials:
        return "After a fix, run the same command to go on, or add --fresh to start it over"
    return (
        f"Its {study.n_finished} trials are all used (failed ones count), so after a fix add "
        f"study.trials={more_trials(study, trials)} to go on, or --fresh to start it over"
    )


def without_a_result(study: Study, trials: int) -> str:
    """How to go on from a run that ended with no COMPLETE trial: after a fix where trials
    failed; where the pruner stopped every one (a short study with a strict pruner, or one
    whose paused trials were not resumed yet), nothing needs a fix."""
    states = {t.state for t in study.trials}
    if TrialState.FAILED in states or TrialState.PRUNED not in states:
        return after_a_fix(study, trials)
    return (
        "The pruner stopped every trial before its end (PRUNED, nothing failed): ask for more "
        f"trials (study.trials={more_trials(study, trials)}; with resume, paused ones may then "
        "run on), or prune later (a larger min_resource)"
    )


def nothing_to_run(study: HeldStudy, trials: int) -> str:
    """Why a run of a finished study trains nothing: a user who reruns a recipe with other
    options (``sampler.acquisition=ucb``) under the same study name would otherwise see
    "30/30 trials done" and take the old results for the new settings."""
    more, n = more_trials(study, trials), study.n_finished
    count = f"{n} of {trials} trials" if n <= trials else f"{n} trials (study.trials={trials})"
    return (
        f"study {study.name!r} ({study.dir}) already has {count}: this run trains nothing, "
        "and its space, seed, sampler, pruner and objective settings are neither used nor "
        "stored; to run them, start a new study (study.name=<another name>), move this one "
        f"aside (--fresh), or ask for more trials (study.trials={more})"
    )


def what_a_run_does(recipe: Recipe, fresh: bool = False) -> list[str]:
    """What running ``recipe`` (with ``--fresh``: after moving its study aside) would do with
    the study its folder holds, judged as opening the study judges it: start one, go on with
    one (in a changed space, with another seed), or train nothing. Raises StudyMismatch (or
    StudyLocked, while another process runs it) where the run would be refused, so
    ``validate`` catches a recipe edited after its study was started before a night's run,
    not at its start. Reads the database only."""
    m = recipe.model
    study_dir = files.absolute(Path(m.logdir)) / m.study.name
    starts = [f"a run starts study {m.study.name!r} in {study_dir}"]
    files.check_study_dir(study_dir)
    if files.StudyLock.is_held(study_dir):  # a run now is refused, --fresh too
        raise files.run_elsewhere(study_dir)
    if fresh:
        if not os.path.lexists(study_dir):
            return starts
        n = _stored_trials(study_dir)
        kept = "" if n is None else f", its {counted(n, 'trial')} kept there"
        return [
            f"a run moves {study_dir} aside (to {study_dir.name}.old-<time>{kept}; nothing is "
            f"deleted) and starts study {m.study.name!r} over"
        ]
    stored = _stored_and_taken(recipe, study_dir)
    if stored is None:
        return starts
    held, taken = stored
    if held.n_finished >= m.study.trials:  # nothing stored either: not the changed space
        return [nothing_to_run(held, m.study.trials)]
    lines = [
        f"a run goes on with study {m.study.name!r} in {study_dir}: "
        f"{held.n_finished} of {m.study.trials} trials done"
    ]
    if taken:
        lines.append(f"in a changed space that holds every trial so far: {'; '.join(taken)}")
    if m.study.seed is not None and m.study.seed != held.seed:
        lines.append(f"its next trials draw from seed {m.study.seed} (stored: {held.seed})")
    last = {"sampler": held.sampler, "pruner": held.pruner}
    changed = other_search(last, {"sampler": m.sampler.name, "pruner": m.pruner.name})
    if changed:
        lines.append(f"its next trials search with {' and '.join(changed)}")
    return lines


def _stored_and_taken(recipe: Recipe, study_dir: Path) -> tuple[StudyRecord, list[str]] | None:
    """The study its folder holds and the space changes it takes from ``recipe``; None where
    the folder holds no study. StudyMismatch where it refuses the recipe."""
    m = recipe.model
    if not _holds_a_study(study_dir):
        return None
    meta, trials = read_stored(study_dir)
    if not meta:
        return None
    try:
        taken = refuse_other(study_dir, meta, trials, recipe.space, m.study.metric, m.study.mode)
    except StudyMismatch as e:
        raise recipe.mismatch(e) from None
    return StudyRecord.of(study_dir, meta, trials), taken


def _holds_a_study(study_dir: Path) -> bool:
    db = study_dir / files.DATABASE
    return not db.is_symlink() and db.is_file() and not holds_nothing(db)


def _stored_trials(study_dir: Path) -> int | None:
    """How many trials the folder's study holds; None where it holds none or cannot be read."""
    if not _holds_a_study(study_dir):
        return None
    try:
        meta, trials = read_stored(study_dir)
    except StorageError:
        return None
    return len(trials) if meta else None


def disconnect(recipe: Recipe) -> None:
    if recipe.model.executor.name == "ray":
        import ray

        from torchtune_hp.executors.ray_exit import shut_down

        shut_down(ray)

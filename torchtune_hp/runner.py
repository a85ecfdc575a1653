"""Run a recipe: open (or resume) its study, save the resolved recipe, drive the trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchtune_hp.executors.devices import device_slots
from torchtune_hp.executors.pool import ProcessPool
from torchtune_hp.executors.spec import launch_spec
from torchtune_hp.progress import ProgressView
from torchtune_hp.recipe import Recipe
from torchtune_hp.study import Study
from torchtune_hp.trial import Trial


def open_study(recipe: Recipe) -> Study:
    m = recipe.model
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


def in_process(recipe: Recipe) -> bool:
    """A function objective with one worker runs in the driver's process (fast, debuggable);
    commands and several workers run as processes (:mod:`torchtune_hp.executors.pool`)."""
    return recipe.model.objective.function is not None and recipe.model.executor.workers == 1


def run_recipe(recipe: Recipe) -> Study:
    """Run until the study holds ``study.trials`` finished trials. The resolved recipe is
    written beside the database (the latest run's, overrides applied)."""
    m = recipe.model
    if in_process(recipe):
        objective = recipe.objective()
    else:
        spec = launch_spec(recipe)
        ex = m.executor
        slots = device_slots(ex.devices, ex.workers, ex.trials_per_device, ex.devices_per_trial)
    study = open_study(recipe)
    assert study.dir is not None
    (study.dir / "recipe.yaml").write_text(f"# resolved from {recipe.path}\n{recipe.resolved_yaml}")
    try:
        with ProgressView(study, m.study.trials) as view:
            if in_process(recipe):

                def run_trial(trial: Trial) -> Any:
                    view.trial_started(trial)
                    return objective(trial, **m.train)

                study.optimize(run_trial, m.study.trials, callbacks=[view.trial_finished])
            else:
                pool = ProcessPool(study, spec, ex.workers, slots)
                pool.run(m.study.trials, view.trial_started, [view.trial_finished])
    except KeyboardInterrupt:
        study.interrupted()
        study.close()
        raise
    except BaseException:
        study.close()
        raise
    return study

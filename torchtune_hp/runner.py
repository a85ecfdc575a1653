"""Run a recipe: open (or resume) its study, save the resolved recipe, drive the trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def run_recipe(recipe: Recipe) -> Study:
    """Run until the study holds ``study.trials`` finished trials. The resolved recipe is
    written beside the database (the latest run's, overrides applied)."""
    objective = recipe.objective()
    train = recipe.model.train
    study = open_study(recipe)
    assert study.dir is not None
    (study.dir / "recipe.yaml").write_text(f"# resolved from {recipe.path}\n{recipe.resolved_yaml}")
    try:
        with ProgressView(study, recipe.model.study.trials) as view:

            def run_trial(trial: Trial) -> Any:
                view.trial_started(trial)
                return objective(trial, **train)

            study.optimize(run_trial, recipe.model.study.trials, callbacks=[view.trial_finished])
    except BaseException:
        study.close()
        raise
    return study

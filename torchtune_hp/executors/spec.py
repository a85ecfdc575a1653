"""A recipe's objective as something the process pool can launch (:class:`LaunchSpec`).

``command`` objectives: relative paths in the command that name files beside the recipe become
absolute (each trial runs in its own folder), and a leading ``python``/``python3`` becomes the
interpreter running torchtune-hp, so a trial sees the same environment. With ``args:
lightning_cli`` the launcher also adds the callback and points the script's TensorBoard logger
at the trial's folder. ``function`` objectives run through ``python -m torchtune_hp.worker``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchtune_hp.executors.argv import build_argv, check_rename, template_fields
from torchtune_hp.executors.metric import compile_metric_regex
from torchtune_hp.executors.pool import LaunchSpec
from torchtune_hp.recipe import ConfigError, Recipe, load_objective
from torchtune_hp.worker import ENV_OBJECTIVE, ENV_TRAIN

PYTHONS = ("python", "python3")


def lightning_cli_extras(run_dir: Path) -> list[str]:
    """The callback from the environment, and a TensorBoardLogger writing into the trial's
    run folder (no version sub-run, no hp_metric)."""
    return [
        "--trainer.callbacks+=torchtune_hp.TuneCallback",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=",
        "--trainer.logger.init_args.default_hp_metric=false",
    ]


def resolve_command(command: list[str], recipe_dir: Path) -> list[str]:
    out = []
    for i, element in enumerate(command):
        if i == 0 and element in PYTHONS:
            out.append(sys.executable)
        elif not template_fields(element) and (recipe_dir / element).is_file():
            out.append(str((recipe_dir / element).resolve()))
        else:
            out.append(element)
    return out


def check_objective(recipe: Recipe) -> None:
    """Everything about the objective that can be checked before a trial runs."""
    obj = recipe.model.objective
    if obj.function is not None:
        load_objective(recipe.path, obj.function, recipe.model.train)
        return
    assert obj.command is not None
    names = list(recipe.space.params)
    try:
        check_rename(obj.rename, names)
    except ValueError as e:
        raise ConfigError(recipe.path, "objective.rename", str(e)) from None
    for element in obj.command:
        unknown = template_fields(element) - set(names)
        if unknown:
            raise ConfigError(
                recipe.path,
                "objective.command",
                f"{element!r} names {sorted(unknown)}, which are not parameters ({names})",
            )
    if obj.metric_regex is not None:
        try:
            compile_metric_regex(obj.metric_regex)
        except (re.error, ValueError) as e:
            raise ConfigError(recipe.path, "objective.metric_regex", str(e)) from None
    if recipe.model.train:
        raise ConfigError(
            recipe.path,
            "train",
            "a command objective takes no train section: put fixed arguments in the command",
        )


def launch_spec(recipe: Recipe) -> LaunchSpec:
    check_objective(recipe)
    obj = recipe.model.objective
    if obj.function is not None:
        env = {
            ENV_OBJECTIVE: f"{recipe.path.resolve()}::{obj.function}",
            ENV_TRAIN: json.dumps(recipe.model.train),
        }
        return LaunchSpec(
            argv=lambda params, run_dir: [sys.executable, "-m", "torchtune_hp.worker"],
            env=env,
            timeout_s=obj.timeout,
        )
    assert obj.command is not None
    command = resolve_command(obj.command, recipe.path.parent)
    style, rename = obj.args, obj.rename

    def argv(params: Mapping[str, Any], run_dir: Path) -> list[str]:
        args = build_argv(command, params, style, rename)
        return args + lightning_cli_extras(run_dir) if style == "lightning_cli" else args

    regex = None if obj.metric_regex is None else compile_metric_regex(obj.metric_regex)
    return LaunchSpec(argv=argv, regex=regex, timeout_s=obj.timeout)

"""A recipe's objective as something the process pool can launch (:class:`LaunchSpec`), and
everything about it that can be checked before the first trial runs.

``command`` objectives. Each trial runs in its own folder, so the command is rewritten once,
before the study starts (the README's "which elements are rewritten"):

* a first element ``python`` or ``python3`` becomes the interpreter running torchtune-hp, so a
  trial sees the same environment; any other first element is left as the user wrote it (a
  venv's ``/path/venv/bin/python`` stays that venv's python: links are not followed);
* an element that is a relative path naming a file or folder that exists beside the recipe
  (``train.py``, ``data``, ``configs/base.yaml``) becomes that path made absolute, again without
  following links;
* nothing else changes: options (``--data=data``), templates (``{lr}``), names on ``PATH``.

With ``args: lightning_cli`` the launcher also adds the callback and points the script's
TensorBoard logger at the trial's folder. ``function`` objectives run through
``python -m torchtune_hp.executors.worker``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from torchtune_hp.errors import ConfigError
from torchtune_hp.executors.argv import check_rename, render, template_fields
from torchtune_hp.executors.metric import compile_metric_regex
from torchtune_hp.executors.process import LaunchSpec
from torchtune_hp.executors.worker import ENV_OBJECTIVE, ENV_TRAIN
from torchtune_hp.files import absolute
from torchtune_hp.objective import load_objective
from torchtune_hp.options import closest
from torchtune_hp.recipe import Recipe, blame_overrides
from torchtune_hp.space import Categorical, Space

PYTHONS = ("python", "python3")
KEY = "objective.command"


def resolve_command(command: list[str], recipe_dir: Path) -> list[str]:
    """The command with the rewrites of the module docstring applied."""
    out = []
    for i, element in enumerate(command):
        if i == 0 and element in PYTHONS:
            out.append(sys.executable)
        elif _beside(element, recipe_dir):
            out.append(str(absolute(recipe_dir / element)))
        else:
            out.append(element)
    return out


def _beside(element: str, recipe_dir: Path) -> bool:
    if not element or element.startswith("-") or template_fields(element):
        return False
    if os.path.isabs(element):
        return False
    return os.path.lexists(recipe_dir / element)


def sample_points(space: Space) -> list[dict[str, Any]]:
    """A few points that together use every choice of every categorical and both ends of
    every range: enough to try a command template on before any trial runs."""
    dim = space.dim
    points = [space.decode([u] * dim) for u in (0.0, 0.5, 1.0)]
    middle = points[1]
    for name, p in space.params.items():
        if isinstance(p, Categorical):
            points += [{**middle, name: choice} for choice in p.choices]
    return points


def check_command(recipe: Recipe) -> list[str]:
    """The resolved command, or a ConfigError saying what in it cannot work."""
    obj = recipe.model.objective
    assert obj.command is not None
    folder = recipe.path.parent
    command = resolve_command(obj.command, folder)
    program = command[0]
    if template_fields(program):
        raise ConfigError(recipe.path, KEY, f"the program {program!r} cannot be a template")
    if os.sep in program:
        if not os.path.isfile(program):
            raise ConfigError(recipe.path, KEY, f"{program} does not exist")
        if not os.access(program, os.X_OK):
            raise ConfigError(recipe.path, KEY, f"{program} is not executable (chmod +x?)")
    elif shutil.which(program) is None:
        raise ConfigError(
            recipe.path, KEY, f"{program!r} is neither a file beside the recipe nor on PATH"
        )
    for given, resolved in zip(obj.command[1:], command[1:], strict=True):
        # a relative path that is not beside the recipe stays relative, and each trial runs in
        # its own folder: a script found only in the current folder would fail every trial
        found = os.path.isabs(resolved) and os.path.exists(resolved)
        if given.endswith(".py") and not _looks_like_option(given) and not found:
            if os.path.isabs(given):
                raise ConfigError(recipe.path, KEY, f"{given!r} does not exist")
            nearby = sorted(p.name for p in folder.glob("*.py"))
            raise ConfigError(
                recipe.path,
                KEY,
                f"{given!r} does not exist beside the recipe ({absolute(folder)})"
                f"{closest(given, nearby)}",
            )
    return command


def _looks_like_option(element: str) -> bool:
    return element.startswith("-") or "=" in element or bool(template_fields(element))


def check_objective(recipe: Recipe) -> None:
    """Everything about the objective that can be checked before a trial runs; an error in
    a key the command line set says so."""
    with blame_overrides(recipe):
        _check_objective(recipe)


def _check_objective(recipe: Recipe) -> None:
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
                KEY,
                f"{element!r} names {sorted(unknown)}, which are not parameters ({names})",
            )
        for point in sample_points(recipe.space):
            try:
                render(element, point, obj.args)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise ConfigError(
                    recipe.path, KEY, f"{element!r} cannot be filled in with {point}: {e}"
                ) from None
    check_command(recipe)
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
    folder = absolute(recipe.path.parent)
    if obj.function is not None:
        env = {
            ENV_OBJECTIVE: f"{absolute(recipe.path)}::{obj.function}",
            ENV_TRAIN: json.dumps(recipe.model.train),
        }
        worker = [sys.executable, "-m", "torchtune_hp.executors.worker"]
        return LaunchSpec(worker, folder, env=env, timeout_s=obj.timeout)
    regex = None if obj.metric_regex is None else compile_metric_regex(obj.metric_regex)
    command = check_command(recipe)
    return LaunchSpec(
        command,
        folder,
        style=obj.args,
        rename=dict(obj.rename),
        python_path=module_path(command, folder),
        regex=regex,
        timeout_s=obj.timeout,
    )


def module_path(command: list[str], folder: Path) -> tuple[str, ...]:
    """The recipe's folder, to put first on the trials' ``PYTHONPATH``, where the command runs
    a module that lies beside the recipe (``python -m train``): each trial runs in its own
    folder, where Python would not find it (``python train.py`` needs nothing: the path is made
    absolute). On a Ray node the folder moves with the recipe (LaunchSpec.moved)."""
    if "-m" not in command[1:-1]:
        return ()
    module = command[command.index("-m", 1) + 1].split(".")[0]
    if not (folder / f"{module}.py").exists() and not (folder / module).is_dir():
        return ()
    return (str(folder),)

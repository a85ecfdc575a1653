"""Loading a recipe's objective function: ``file.py:function`` beside the recipe, or
``package.module:function``. Used by the driver (in-process trials, ``validate``) and by worker
processes, so it imports nothing of the recipe layer."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torchtune_hp.errors import ConfigError
from torchtune_hp.options import closest

KEY = "objective.function"


def load_objective(recipe_path: Path, ref: str, train: Mapping[str, Any]) -> Callable[..., Any]:
    """The function ``ref`` names; checks that it accepts ``(trial, **train)``. A file that does
    not import (a SyntaxError, a missing module) is a ConfigError naming its file and line."""
    target, _, func_name = ref.rpartition(":")
    if target.endswith(".py"):
        file = (recipe_path.parent / target).absolute()
        if not file.is_file():
            beside = [f.name for f in file.parent.glob("*.py")] if file.parent.is_dir() else []
            near = closest(file.name, beside)
            raise ConfigError(recipe_path, KEY, f"file {file} does not exist{near}")
        # its folder first on the import path, as `python obj.py` has it: the file's own
        # modules beside it (`import helper`) import, then and when the function runs
        if str(file.parent) not in sys.path:
            sys.path.insert(0, str(file.parent))
        mod_name = f"torchtune_hp_objective_{file.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        # imported as `python file.py` runs it: its own name and no arguments in sys.argv, so
        # code that reads them at import time does not read torchtune-hp's (`run r.yaml`)
        argv, sys.argv = sys.argv, [str(file)]
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:
            del sys.modules[mod_name]
            raise ConfigError(recipe_path, KEY, f"{file} does not import: {where(e, file)}") from e
        finally:
            sys.argv = argv
    else:
        try:
            module = _import_beside(target, recipe_path.parent.resolve())
        except Exception as e:
            beside = recipe_path.parent / f"{target}.py"
            hint = f" (did you mean {target}.py:{func_name}, the file beside the recipe?)"
            if not beside.is_file():
                hint = (
                    " (a package.module is imported from the installed packages, PYTHONPATH, "
                    f"or the recipe's folder {recipe_path.parent.resolve()})"
                )
            raise ConfigError(
                recipe_path, KEY, f"cannot import module {target!r}: {e}{hint}"
            ) from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        functions = [n for n, v in vars(module).items() if inspect.isfunction(v)]
        near = closest(func_name, functions)
        raise ConfigError(recipe_path, KEY, f"{target} has no function {func_name!r}{near}")
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes = [p.kind for p in inspect.signature(fn).parameters.values()]
    if not any(k in positional or k is inspect.Parameter.VAR_POSITIONAL for k in takes):
        raise ConfigError(
            recipe_path,
            KEY,
            f"{func_name}() must take the trial as its first argument: def {func_name}(trial, ...)",
        )
    _check_train(recipe_path, fn, func_name, train)
    return fn


def _check_train(
    recipe_path: Path, fn: Callable[..., Any], func_name: str, train: Mapping[str, Any]
) -> None:
    """``fn(trial, **train)`` binds; else a ConfigError naming the ``train`` key it does not
    take and the closest parameter it has (``max_epoch`` -> ``max_epochs``)."""
    signature = inspect.signature(fn)
    try:
        signature.bind(None, **train)
    except TypeError as e:
        params = list(signature.parameters.values())[1:]  # after the trial
        star = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names = [p.name for p in params if p.kind not in star]
        unknown = [k for k in train if k not in names]
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if unknown and not takes_any:
            raise ConfigError(
                recipe_path,
                f"train.{unknown[0]}",
                f"{func_name}(trial, ...) has no parameter {unknown[0]!r}"
                f"{closest(unknown[0], names)}; it takes {names}",
            ) from None
        raise ConfigError(
            recipe_path, "train", f"{func_name}(trial, **train) does not accept these: {e}"
        ) from None


def _import_beside(target: str, folder: Path) -> Any:
    """``import target``, where its top-level package is not installed also from ``folder``
    (the recipe's): a package kept beside the recipe imports, as ``python -m pkg.mod`` run
    there would, in the driver and in every worker alike (they know the recipe's path, not the
    driver's working folder). Installed packages come first, so a folder there named like one
    (``torch/``) does not shadow it. A single file beside the recipe is not imported this way:
    its form is ``file.py:function`` (the error says so), one way to each file."""
    top = target.split(".")[0]
    if importlib.util.find_spec(top) is None and (folder / top / "__init__.py").is_file():
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    return importlib.import_module(target)


def where(error: BaseException, file: Path) -> str:
    """``<file>:<line>: <Error>: <message>`` for the deepest frame in ``file`` (or the
    SyntaxError's own position)."""
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: SyntaxError: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(file)]
    line = f"{file}:{frames[-1].lineno}: " if frames else f"{file}: "
    if isinstance(error, SystemExit):  # argparse's parse_args() at the top of a script, say
        return (
            f"{line}it exits while imported (SystemExit: {error.code}); a function objective's "
            'file is imported, so parse arguments under `if __name__ == "__main__":`, or '
            "tune the script as it is with objective.command"
        )
    return f"{line}{type(error).__name__}: {error}"

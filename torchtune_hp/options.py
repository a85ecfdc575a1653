"""The options of a sampler or pruner, checked against the types its constructor declares.

Recipes are strict: ``deterministic: "false"`` is a string, not a boolean (Python would take it
as true), and ``min_resource: "3"`` is not a number. Each option is checked against the
annotation of the parameter it fills, so the message names the option, what was given and what
is accepted, and the closest valid spelling of an unknown one.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class OptionError(ValueError):
    """An unknown option, or one of the wrong type; ``key`` names it for the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def closest(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a misspelled name (``GP`` for ``gp`` too), else nothing."""
    same_letters = [v for v in valid if v.lower() == name.lower()]
    match = same_letters or difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raises ValueError naming ``key``, the ``choices`` and the closest one when ``value`` is
    not one of them (``acquisition: loge`` -> did you mean 'logei'?). The message starts with
    ``key``, which is how :func:`build` names the option it is about."""
    if value not in choices:
        raise ValueError(
            f"{key} must be one of {', '.join(choices)}, got {value!r}"
            + closest(str(value), choices)
        )


def check_name(kind: str, name: object, known: Sequence[str]) -> None:
    """``name`` must be one of ``known`` (``kind``: sampler, pruner)."""
    if name not in known:
        raise OptionError(
            "name",
            f"unknown {kind} {name!r}{closest(str(name), known)}; expected one of {sorted(known)}",
        )


def check_plugin(kind: str, given: Any, known: Sequence[str], method: str, args: str) -> None:
    """A ``sampler=``/``pruner=`` object must have ``method(args)`` (the protocol the study
    calls): an Optuna sampler or pruner, or a stray value, is refused when the study opens
    instead of failing every trial at its first use."""
    call = getattr(given, method, None)
    fits = callable(call) and not isinstance(given, type)
    if fits:
        try:
            inspect.signature(call).bind(*args.split(", "))
        except (TypeError, ValueError):
            fits = False
    peer = type(given).__module__.split(".")[0]
    hint = f" (Optuna's {kind}s are not: give one of ours by its name)" if peer == "optuna" else ""
    if not fits:
        raise TypeError(
            f"{kind} must be a name, one of {sorted(known)}, or an object with a "
            f"{method}({args}) method; got {given!r}{hint}"
        )


def build(cls: type, what: str, options: Mapping[str, Any], **fixed: Any) -> Any:
    """``cls(**fixed, **options)``; a value the class rejects is an :class:`OptionError`
    naming the option its message is about."""
    try:
        return cls(**fixed, **options)
    except (TypeError, ValueError) as e:
        raise OptionError(option_named(str(e), options) or "name", f"{what}: {e}") from e


def option_named(text: str, options: Iterable[str]) -> str | None:
    """The option a message is about: the one it starts with, else one it names, each as a
    whole word (a message about ``resume_ratio`` is not about ``resume``)."""
    keys = list(options)
    for pattern in (r"^{}\b", r"\b{}\b"):
        named = [k for k in keys if re.search(pattern.format(re.escape(k)), text)]
        if named:
            return max(named, key=len)
    return None


def accepted_options(func: Callable[..., Any], skip: Sequence[str]) -> list[str]:
    params = inspect.signature(func).parameters
    return [p for p in params if p not in ("self", *skip)]


def check_options(
    func: Callable[..., Any], options: Mapping[str, Any], what: str, skip: Sequence[str] = ()
) -> None:
    """Raise :class:`OptionError` for an option ``func`` does not take or whose value does not
    match its annotation. ``what`` names the thing (``sampler 'gp'``)."""
    allowed = accepted_options(func, skip)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that cannot be resolved: names are still checked
        hints = {}
    for key, value in options.items():
        if key not in allowed:
            raise OptionError(
                key,
                f"{what} has no option {key!r}{closest(key, allowed)}; it accepts "
                f"{allowed or 'none'}",
            )
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise OptionError(key, f"{what}: {key} must be {_describe(hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, Mapping):
            key_t, val_t = (typing.get_args(hint) + (Any, Any))[:2]
            return isinstance(value, Mapping) and all(
                _matches(k, key_t) and _matches(v, val_t) for k, v in value.items()
            )
        if issubclass(origin, Sequence):
            (item_t,) = typing.get_args(hint)[:1] or (Any,)
            return isinstance(value, (list, tuple)) and all(_matches(v, item_t) for v in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return "a mapping"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))

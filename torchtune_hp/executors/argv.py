"""The command line of one trial: the recipe's command plus the trial's parameters.

Arguments are an argv list, never a shell string. A command element with ``{name}`` in it is a
template (``"--optim.lr={lr}"``) and that parameter is not appended again; the others are
appended in the chosen style, under their ``rename``d names:

==============  ==========================  =============================================
style           appended                    for
==============  ==========================  =============================================
argparse        ``--lr 0.01``               argparse, click, typer scripts
equals          ``--lr=0.01``               the same, one token per parameter
hydra           ``lr=0.01``                 Hydra overrides (``++lr=0.01`` is a rename away)
lightning_cli   ``--model.lr=0.01``         LightningCLI; a renamed name with a dot is kept
==============  ==========================  =============================================

Values are written as Python writes them (``repr`` for floats, so no precision is lost);
booleans as ``true``/``false`` for hydra and lightning_cli, ``True``/``False`` otherwise.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

STYLES = ("argparse", "equals", "hydra", "lightning_cli")


def format_value(value: Any, style: str) -> str:
    if isinstance(value, bool):
        return ("true" if value else "false") if style in ("hydra", "lightning_cli") else str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def template_fields(element: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(element) if f}


def build_argv(
    command: Sequence[str],
    params: Mapping[str, Any],
    style: str = "argparse",
    rename: Mapping[str, str] | None = None,
) -> list[str]:
    if style not in STYLES:
        raise ValueError(f"args must be one of {list(STYLES)}, got {style!r}")
    rename = dict(rename or {})
    used: set[str] = set()
    argv = []
    for element in command:
        fields = template_fields(element)
        unknown = fields - set(params)
        if unknown:
            raise ValueError(f"command element {element!r} names {sorted(unknown)}, not parameters")
        used |= fields
        argv.append(element.format(**{k: format_value(params[k], style) for k in fields}))
    for name, value in params.items():
        if name in used:
            continue
        arg, text = rename.get(name, name), format_value(value, style)
        if style == "argparse":
            argv += [f"--{arg}", text]
        elif style == "equals":
            argv.append(f"--{arg}={text}")
        elif style == "hydra":
            argv.append(f"{arg}={text}")
        else:
            argv.append(f"--{arg if '.' in arg else 'model.' + arg}={text}")
    return argv


def check_rename(rename: Mapping[str, str], names: Sequence[str]) -> None:
    unknown = sorted(set(rename) - set(names))
    if unknown:
        raise ValueError(f"rename names {unknown}, which are not parameters ({list(names)})")
    for arg in rename.values():
        if not re.fullmatch(r"[+~]*[A-Za-z_][\w.\-/]*", arg):
            raise ValueError(f"rename target {arg!r} is not an argument name")

"""The command line of one trial: the recipe's command plus the trial's parameters.

Arguments are an argv list, never a shell string. A command element with ``{name}`` in it is a
template (``"--optim.lr={lr}"``, or with a format spec, ``"--lr={lr:.3g}"``) and that parameter
is not appended again; the others are appended in the chosen style, under their ``rename``d
names:

==============  ==========================  =============================================
style           appended                    for
==============  ==========================  =============================================
argparse        ``--lr 0.01``               argparse, click, typer scripts
equals          ``--lr=0.01``               the same, one token per parameter
hydra           ``lr=0.01``                 Hydra overrides (``++lr=0.01`` is a rename away)
lightning_cli   ``--model.lr=0.01``         LightningCLI; a renamed name with a dot is kept
==============  ==========================  =============================================

Values are written as Python writes them (``repr`` for floats, so no precision is lost);
booleans as ``true``/``false`` and a ``null`` choice as ``null`` for hydra and lightning_cli
(what their parsers read as a bool and None), ``True``/``False``/``None`` otherwise (argparse
has no None: such a script reads the word). An appended hydra string that Hydra's override
grammar would split or retype (``x,y``, ``a b``, ``[1]``, ``true``, ``1e-3``) is quoted
(``opt='x,y'``), so the script gets the choice as written; a template is written as it stands
(its quotes are yours).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchtune_hp.options import check_choice, closest
from torchtune_hp.trial import PAUSE_CHECKPOINT

STYLES = ("argparse", "equals", "hydra", "lightning_cli")


_YAML_STYLES = ("hydra", "lightning_cli")  # their values are parsed, not taken as strings
# what Hydra's grammar reads as a plain string, unquoted: no comma, bracket, brace, paren,
# quote, equals sign, space or backslash (a choice with one is quoted)
_HYDRA_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-+./:@%]*")  # ASCII: its grammar's
_HYDRA_OTHER = {"true", "false", "null", "inf", "nan"}  # words it reads as another type


def format_value(value: Any, style: str) -> str:
    if isinstance(value, bool):
        return ("true" if value else "false") if style in _YAML_STYLES else str(value)
    if value is None:
        return "null" if style in _YAML_STYLES else "None"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def hydra_string(text: str) -> str:
    """``text`` as a Hydra override value that reads back as this string: plain where the
    grammar takes it so, else single-quoted, with a quote and the backslashes before a quote
    or at the end escaped (Hydra's rules for quoted values)."""
    if _HYDRA_PLAIN.fullmatch(text) and text.lower() not in _HYDRA_OTHER:
        return text
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def template_fields(element: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(element) if f}


_CONVERSIONS = {"r": repr, "s": str, "a": ascii}


def render(element: str, params: Mapping[str, Any], style: str) -> str:
    """A command element with its ``{name}`` fields filled in. A plain ``{lr}`` is written as
    appended values are (``repr`` for floats); a format spec or conversion (``{lr:.3g}``,
    ``{opt!r}``) is applied to the value as Python's ``format`` does."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(element):
        out.append(literal)
        if name is None:
            continue
        if name not in params:
            raise ValueError(f"command element {element!r} names {name!r}, not a parameter")
        value = params[name]
        if conversion:
            value = _CONVERSIONS[conversion](value)
        out.append(format(value, spec) if spec or conversion else format_value(value, style))
    return "".join(out)


def build_argv(
    command: Sequence[str],
    params: Mapping[str, Any],
    style: str = "argparse",
    rename: Mapping[str, str] | None = None,
) -> list[str]:
    check_choice("args", style, STYLES)
    rename = dict(rename or {})
    used: set[str] = set()
    argv = []
    for element in command:
        used |= template_fields(element)
        argv.append(render(element, params, style))
    for name, value in params.items():
        if name in used:
            continue
        arg, text = rename.get(name, name), format_value(value, style)
        if style == "argparse":
            argv += [f"--{arg}", text]
        elif style == "equals":
            argv.append(f"--{arg}={text}")
        elif style == "hydra":
            argv.append(f"{arg}={hydra_string(text) if isinstance(value, str) else text}")
        else:
            argv.append(f"--{arg if '.' in arg else 'model.' + arg}={text}")
    return argv


def check_rename(rename: Mapping[str, str], names: Sequence[str]) -> None:
    unknown = sorted(set(rename) - set(names))
    if unknown:
        raise ValueError(
            f"rename names {unknown}, which are not parameters{closest(unknown[0], names)} "
            f"({list(names)})"
        )
    for arg in rename.values():
        if not re.fullmatch(r"[+~]*[A-Za-z_][\w.\-/]*", arg):
            raise ValueError(f"rename target {arg!r} is not an argument name")


def lightning_cli_extras(
    run_dir: Path, resuming: bool = False, command: Sequence[str] = ()
) -> list[str]:
    """The callback from the environment, and a TensorBoardLogger writing into the trial's
    run folder (no version sub-run, no hp_metric), each unless the ``command`` names its
    own on the command line: a second TuneCallback fails every trial (Lightning refuses two
    stateful callbacks of a type), and a logger the user chose (CSV, W&B) is theirs to keep.
    A paused trial run again (``resuming``) resumes from the checkpoint the callback saved
    when it paused, through ``fit``'s own ``--ckpt_path``, as a script of its own does with
    ``ckpt_path=trial.ckpt_path``: without it the run would train from epoch 0 again under
    the resumed trial's name."""
    extras = []
    if not any("TuneCallback" in arg for arg in command):
        extras.append("--trainer.callbacks+=torchtune_hp.TuneCallback")
    if not any(arg.startswith("--trainer.logger") for arg in command):
        extras += [
            "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
            f"--trainer.logger.init_args.save_dir={run_dir.parent}",
            f"--trainer.logger.init_args.name={run_dir.name}",
            "--trainer.logger.init_args.version=",
            "--trainer.logger.init_args.default_hp_metric=false",
        ]
    checkpoint = run_dir / PAUSE_CHECKPOINT
    if resuming and checkpoint.is_file():
        extras.append(f"--ckpt_path={checkpoint}")
    return extras

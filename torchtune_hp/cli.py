"""The ``torchtune-hp`` command line. Bad input exits with code 2 and one message naming the
file, the key and what was expected; a study that ends without a COMPLETE trial exits 1; a stop
signal exits with 128 + its number and leaves the study resumable (see :mod:`torchtune_hp.entry`,
the command's entry point)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import click

from torchtune_hp import files
from torchtune_hp.errors import (
    ClusterGone,
    ConfigError,
    StorageError,
    StudyMismatch,
    StudyStopped,
)
from torchtune_hp.record import read_stored, study_folder
from torchtune_hp.trial import TrialState, best_of

# The recipe layer (pydantic, the samplers, numpy) is imported by the commands that need it, so
# `trials` and `best` start in a fraction of a second.
RICH_ROWS = 200  # a terminal gets a rich table up to this many trials, plain columns beyond

NO_RESULT = 1
BAD_INPUT = 2


class NoResult(click.ClickException):
    """The command worked but has nothing to show: exit 1, ``error: ...`` like the others."""

    exit_code = NO_RESULT


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", "-V", package_name="torchtune-hp")
def cli() -> None:
    """Hyperparameter tuning for PyTorch: GP Bayesian optimization, grid/random/Sobol search,
    SQLite studies that resume, TensorBoard.

    \b
    Example:
      torchtune-hp run digits_mlp study.trials=10
    """


@cli.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option(
    "--fresh",
    is_flag=True,
    help="Start the study over: move its folder aside (to <name>.old-<time>, nothing is "
    "deleted) and run from trial 0.",
)
def run(recipe: str, overrides: tuple[str, ...], fresh: bool) -> None:
    """Run (or resume) the study described by RECIPE, a path or a built-in name.

    OVERRIDES are dotted key=value pairs (split on the first '=', values read as YAML).

    \b
    Example:
      torchtune-hp run digits_mlp study.trials=40 sampler.name=random logdir=/tmp/logs
      torchtune-hp run my.yaml --fresh     # start over after fixing a mistake
    """
    from torchtune_hp.recipe import load_recipe
    from torchtune_hp.runner import run_recipe, without_a_result

    loaded = load_recipe(recipe, overrides)

    def move_aside() -> None:
        moved = start_over(files.absolute(loaded.model.logdir) / loaded.model.study.name)
        if moved is not None:
            click.echo(f"moved the old study to {moved}", err=True)

    with run_recipe(loaded, move_aside if fresh else None) as study:
        best = study.incumbent
        where = shlex.quote(str(study.dir))  # pasted back into a shell: spaces, quotes
        if best is None:
            raise NoResult(
                f"{study.dir}: no trial completed; see why with: torchtune-hp trials "
                f"{where}. {without_a_result(study, loaded.model.study.trials)}"
            )
        board = loaded.model.tensorboard.enabled  # off: no event files for a dashboard
        say(
            f"best {study.metric} = {best.value:.6g} (trial {best.number}) with {best.params}\n"
            f"trials: torchtune-hp trials {where}    best config: torchtune-hp best {where}"
            + (f"\ndashboard: {dashboard_command(where, len(study.trials))}" if board else "")
        )


def dashboard_command(where: str, n_trials: int) -> str:
    """The TensorBoard command for the study. Each trial is a run with an event file or more,
    and TensorBoard's fast loader (its default) keeps every one open: past the open-file limit
    (often 1,024) it answers runs with nothing, so a study that large gets the classic loader
    and the reason (this shell's limit is the likeliest one TensorBoard will be started in)."""
    plain = f"tensorboard --logdir {where}"
    try:
        import resource
    except ImportError:  # not on this platform: nothing to compare with
        return plain
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or n_trials <= soft // 2:
        return plain
    return (
        f"{plain} --load_fast=false   ({n_trials} trials, an event file "
        f"or more each, near or past this shell's open-file limit of {soft}, where "
        "TensorBoard's default fast loader answers runs with nothing; or run `ulimit -n "
        "65536` first and leave the flag out)"
    )


def say(text: str, nl: bool = True) -> None:
    """Print a result; a reader that stopped reading (``| head``) is not an error."""
    try:
        click.echo(text, nl=nl)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nor is Python's own flush at exit
        os.close(devnull)


def start_over(study_dir: Path) -> Path | None:
    """Move a study's folder aside, unless a driver is running it; its TensorBoard sessions
    then name the folder it moved to (see :meth:`StudyBoard.relabel`)."""
    if not os.path.lexists(study_dir):
        return None
    lock = files.StudyLock(study_dir).acquire()
    try:
        aside = study_dir.with_name(f"{study_dir.name}.old-{files.timestamp()}")
        os.rename(study_dir, aside)
    finally:
        lock.release()
    from torchtune_hp.board.study_board import StudyBoard
    from torchtune_hp.space import Space
    from torchtune_hp.storage import Storage

    try:
        meta, rows = read_stored(aside) if (aside / files.DATABASE).is_file() else ({}, [])
        if not meta:
            return aside
        space = Space.from_dict(meta["space"])
        board = StudyBoard(aside, aside.name, space, meta["metric"], meta["mode"], 0)
        board.relabel(rows)
    except Exception as e:  # a damaged or empty database: the move stands, the labels stay
        click.echo(f"note: {aside}: its TensorBoard rows still name the study: {e}", err=True)
        return aside
    try:
        named = Storage(aside / files.DATABASE)
        try:
            named.set_meta({"name": aside.name})  # as its rows say now (see Study._renamed)
        finally:
            named.close()
    except Exception as e:  # the move and the rows stand; reopened, it relabels them again
        click.echo(f"note: {aside}: its database still names the study: {e}", err=True)
    return aside


@cli.command(name="ls")
def ls_() -> None:
    """List the built-in recipes.

    \b
    Example:
      torchtune-hp ls
    """
    from torchtune_hp.recipe import builtin_recipes, parse_yaml

    for name, path in builtin_recipes().items():
        desc = (parse_yaml(path.read_text()) or {}).get("description", "")
        say(f"{name:<24} {desc}")


@cli.command()
@click.argument("name")
@click.argument("dest")
def cp(name: str, dest: str) -> None:
    """Copy a recipe and the Python files beside it that it uses (its objective function or
    command scripts, and the sibling modules they import) to DEST to edit them.

    \b
    Example:
      torchtune-hp cp digits_mlp my_recipes/ && torchtune-hp run my_recipes/digits_mlp.yaml
    """
    from torchtune_hp.recipe import find_recipe, parse_yaml

    src = find_recipe(name)
    # a folder unless DEST names a YAML file (``my_recipes`` need not exist, nor end in /)
    as_file = Path(dest).suffix.lower() in (".yaml", ".yml") and not Path(dest).is_dir()
    target = Path(dest) if as_file else Path(dest) / src.name
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = parse_yaml(src.read_text()) or {}
    objective = raw.get("objective") or {}
    named = [str(objective.get("function", "")).partition(":")[0]]
    named += [str(e) for e in objective.get("command") or []]
    copies = [(src, target, _retitled(src.read_bytes(), target))]
    for py in local_modules(src.parent, [n for n in named if n.endswith(".py")]):
        if not _inside(src.parent / py, src.parent):
            warnings.warn(
                f"{src}: {py} is outside the recipe's folder: not copied (copy it yourself)",
                stacklevel=1,  # attributed to this module: shown as one line
            )
            continue
        copies.append((src.parent / py, target.parent / py, (src.parent / py).read_bytes()))
    for _, b, content in copies:
        if os.path.lexists(b) and not _holds(b, content):
            raise ConfigError(b, "", "already exists; not overwritten")
    for a, b, content in copies:
        if os.path.lexists(b):  # the same bytes (two recipes sharing a script): kept as it is
            say(f"{b}: already there, the same as {a.name}")
            continue
        b.write_bytes(content)
        say(f"copied {a.name} -> {b}")


def _retitled(recipe: bytes, target: Path) -> bytes:
    """A built-in recipe's first line is the command that runs it (``# torchtune-hp run
    digits_mlp``); in the copy it runs the copy (the built-in's name ran the built-in)."""
    first, nl, rest = recipe.partition(b"\n")
    head = b"# torchtune-hp run "
    if not first.startswith(head):
        return recipe
    try:  # the overrides after the recipe's name stay (study.trials=3 runs so in the copy)
        words = shlex.split(first[len(head) :].decode())
    except ValueError:
        return recipe
    where = str(target)
    where = f"./{where}" if where.startswith("-") else where  # not read as an option
    command = shlex.join([where, *words[1:]])
    return head + command.encode() + nl + rest


def _holds(b: Path, content: bytes) -> bool:
    """Whether ``b`` is a regular file (not a link) holding exactly ``content``."""
    return b.is_file() and not b.is_symlink() and b.read_bytes() == content


def _inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(
        folder
    )


def local_modules(folder: Path, scripts: list[str]) -> list[str]:
    """``scripts`` that exist in ``folder``, and the sibling modules they import, transitively."""
    import ast

    found: list[str] = []
    todo = [s for s in scripts if (folder / s).is_file()]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.append(name)
        for node in ast.walk(ast.parse((folder / name).read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            todo += [f"{m}.py" for m in modules if (folder / f"{m}.py").is_file()]
    return found


@cli.command()
@click.argument("path")
@click.argument("overrides", nargs=-1)
@click.option("--fresh", is_flag=True, help="Check the run that --fresh would make.")
def validate(path: str, overrides: tuple[str, ...], fresh: bool) -> None:
    """Check a recipe without running it: keys, types, bounds, sampler, objective, and what
    a run would do with the study already in its folder (start, go on, or refuse it; with
    --fresh, move it aside and start over).

    \b
    Example:
      torchtune-hp validate digits_mlp study.trials=5
    """
    from torchtune_hp.display import counted
    from torchtune_hp.launch import check_objective
    from torchtune_hp.recipe import blame_overrides, load_recipe
    from torchtune_hp.runner import check_executor, slots_of, what_a_run_does

    recipe = load_recipe(path, overrides)
    check_objective(recipe)
    with blame_overrides(recipe):
        check_executor(recipe)
        slots_of(recipe)
    plan = what_a_run_does(recipe, fresh)
    m = recipe.model
    say(
        f"{recipe.path}: OK — study {m.study.name!r}, {counted(len(recipe.space), 'parameter')}, "
        f"sampler {m.sampler.name}, {m.study.trials} trials, {m.study.mode} {m.study.metric}"
    )
    for line in plan:
        say(f"  {line}")


def _study_folder(_ctx: click.Context, _param: click.Parameter, path: Path) -> Path:
    """STUDY_DIR as given, or the folder of the study.db given (as load_study takes it)."""
    return study_folder(path)


@cli.command()
@click.argument("study_dir", type=click.Path(path_type=Path), callback=_study_folder)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--trial", "number", type=int, help="Show this trial in full (its whole error).")
def trials(study_dir: Path, fmt: str, number: int | None) -> None:
    """Show the trials of the study in STUDY_DIR.

    \b
    Example:
      torchtune-hp trials logs/digits_mlp --format json
      torchtune-hp trials logs/digits_mlp --format csv > trials.csv  # Optuna's columns
      torchtune-hp trials logs/digits_mlp --trial 3     # one trial, its whole error
    """
    from torchtune_hp.display import NOTE_MIN, column_widths, plain_table, trial_detail, trial_rows

    driven = files.StudyLock.is_held(study_dir)  # before reading: a driver alive now
    meta, rows = read_stored(study_dir)
    left = [t.number for t in rows if t.state is TrialState.RUNNING]
    if left and not driven:
        click.echo(
            f"note: no driver runs this study now (it was killed, or died): its RUNNING trials "
            f"{left} are recorded as died (or, run again after a pause, paused again) when it "
            "next runs",
            err=True,
        )
    if number is not None:
        chosen = [t for t in rows if t.number == number]
        if not chosen:
            held = f"trials 0 to {len(rows) - 1}" if rows else "the study has no trials yet"
            raise ConfigError(study_dir, "--trial", f"no trial {number} ({held})")
        if fmt == "json":
            steps = {s: v if math.isfinite(v) else None for s, v in chosen[0].intermediate.items()}
            say(json.dumps({**chosen[0].to_json(), "intermediate": steps}))
            return
        if fmt == "table":
            say(trial_detail(chosen[0], meta.get("metric", "value")))
            return
        rows = chosen  # csv: its one row
    if fmt == "json":
        say(json.dumps([t.to_json() for t in rows], indent=2))
        return
    if fmt == "csv":
        from torchtune_hp.export import write_csv

        text = io.StringIO()
        write_csv(rows, list(meta.get("space", {})), text)
        say(text.getvalue(), nl=False)
        return
    header, cells = trial_rows(rows, list(meta.get("space", {})), meta.get("metric", "value"))
    if not sys.stdout.isatty():
        say(plain_table(header, cells))
        return
    if len(rows) > RICH_ROWS:  # plain columns, faster to draw, one line per trial too
        say(plain_table(header, cells, shutil.get_terminal_size().columns))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    # Numbers are never cut short ("9.50…" reads as 9.5): every column but the note keeps
    # its widest cell, the note gets one line cut to what is left, and where the numbers
    # alone do not fit the terminal the plain table is printed (its lines wrap, whole).
    widths = column_widths(header, cells)
    note_room = console.width - sum(widths[:-1]) - 3 * len(header) - 1  # less the borders
    if note_room < min(widths[-1], NOTE_MIN):
        say(plain_table(header, cells))
        return

    table = Table()
    for name, width in zip(header[:-1], widths, strict=False):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column(header[-1], no_wrap=True, overflow="ellipsis", max_width=note_room)
    for row in cells:
        table.add_row(*map(Text, row))  # text, not markup: "[rank0]: ..." stays as written
    console.print(table)


@cli.command()
@click.argument("study_dir", type=click.Path(path_type=Path), callback=_study_folder)
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]), default="json")
def best(study_dir: Path, fmt: str) -> None:
    """Print the best trial of the study in STUDY_DIR (yaml: its params, usable as a config).

    \b
    Example:
      torchtune-hp best logs/digits_mlp --format yaml > best.yaml
    """
    meta, rows = read_stored(study_dir)
    top = best_of(rows, meta.get("mode", "min"))
    if top is None:
        raise NoResult(f"{study_dir}: no COMPLETE trial yet")
    if fmt == "yaml":
        import yaml

        say(yaml.safe_dump(top.params, sort_keys=False, allow_unicode=True), nl=False)
    else:
        say(json.dumps({"number": top.number, "params": top.params, "value": top.value}))


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """Our own warnings (and those about our calls) as one line; other libraries' as usual.
    A warning that cannot be shown (a closed terminal or pipe) is dropped: showing it must
    never cost the trial it is about."""
    with contextlib.suppress(OSError):
        if "torchtune_hp" in str(filename):
            click.echo(f"warning: {message}", err=True)
        else:
            _default_showwarning(message, category, filename, lineno, file, line)


def main() -> int:
    """Run the command line; returns the exit code (see :mod:`torchtune_hp.entry`)."""
    warnings.showwarning = _show_warning
    try:
        # not cli.main(): it turns a KeyboardInterrupt (and the signal it stands for) into a
        # bare Abort; stop signals reach torchtune_hp.entry as they are
        with cli.make_context("torchtune-hp", sys.argv[1:]) as ctx:
            code = cli.invoke(ctx)
    except click.exceptions.Exit as e:
        return e.exit_code
    except StudyMismatch as e:
        return _error(f"{e} On the command line, --fresh sets the old study aside.", BAD_INPUT)
    except (ConfigError, StorageError, ClusterGone) as e:
        return _error(str(e), BAD_INPUT)
    except StudyStopped as e:
        return _error(str(e), NO_RESULT)
    except OSError as e:
        where = e.filename if e.filename is not None else ""
        return _error(f"{where}: {e.strerror or e}" if where else str(e), BAD_INPUT)
    except click.exceptions.UsageError as e:
        with contextlib.suppress(OSError):
            e.show()
        return e.exit_code
    except click.ClickException as e:
        return _error(e.format_message(), e.exit_code)
    return code if isinstance(code, int) else 0


def _error(message: str, code: int) -> int:
    with contextlib.suppress(OSError):  # no terminal left to tell (a closed window)
        click.echo(f"error: {message}", err=True)
    return code


if __name__ == "__main__":
    from torchtune_hp.entry import main as entry_main

    entry_main()

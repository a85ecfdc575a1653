"""The trials as flat records, one per trial, for analysis outside the tool: a pandas
DataFrame (``Study.trials_dataframe()``) and CSV (``torchtune-hp trials DIR --format csv``).

The columns are Optuna's ``trials_dataframe()`` names where the two mean the same, so an
Optuna user's analysis code runs on them: ``number``, ``value``, ``datetime_start``,
``datetime_complete``, ``duration``, ``params_<name>`` (one column per parameter, empty
where a trial lacks it: a parameter added or removed between runs), ``state`` (``COMPLETE``,
``PRUNED``, ``FAILED``, ``RUNNING``, ...). Then ours: ``origin`` (how its parameters were
chosen), ``reports`` (how many intermediate values it reported), ``note`` and ``error``.
``duration`` is a ``Timedelta`` in the DataFrame, as Optuna's, and seconds in the CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import IO, Any

from torchtune_hp.space import Float, Int, Space
from torchtune_hp.trial import FrozenTrial, iso_time


def param_names(trials: Sequence[FrozenTrial], names: Sequence[str]) -> list[str]:
    """The space's parameters in its order, then any other that a trial holds (a parameter
    since removed from the space), in the order first met."""
    seen = list(names)
    for t in trials:
        seen.extend(k for k in t.params if k not in seen)
    return seen


def header(names: Sequence[str]) -> list[str]:
    """The columns, for the parameters ``names`` (see :func:`param_names`)."""
    return [
        "number",
        "value",
        "datetime_start",
        "datetime_complete",
        "duration",
        *(f"params_{k}" for k in names),
        "state",
        "origin",
        "reports",
        "note",
        "error",
    ]


def table(
    trials: Sequence[FrozenTrial], names: Sequence[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and one flat dict per trial (see the module's docstring); times are
    ``datetime``s (UTC), ``duration`` a ``timedelta`` (None while a trial runs)."""
    columns = param_names(trials, names)
    keys = header(columns)
    records = []
    for t in trials:
        dur = None if t.duration_s is None else timedelta(seconds=t.duration_s)
        cells = [t.number, t.value, t.start, t.end, dur, *(t.params.get(k) for k in columns)]
        cells += [t.state.name, t.origin.value, len(t.intermediate), t.note, t.error]
        records.append(dict(zip(keys, cells, strict=True)))
    return keys, records


def dataframe(trials: Sequence[FrozenTrial], space: Space) -> Any:
    """The table as a pandas DataFrame (pandas is imported here only: it is optional), its
    columns of one type whatever the trials hold (none yet, none with a value), as Optuna's:
    analysis code that compares values or sums durations works on every study."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "trials_dataframe() needs pandas: pip install pandas (or use "
            "`torchtune-hp trials DIR --format csv` / `--format json`)"
        ) from e
    columns, records = table(trials, list(space.params))
    frame = pd.DataFrame.from_records(records, columns=columns)
    kinds = {"number": "int64", "value": "float64", "reports": "int64"}
    for name, p in space.params.items():  # a float parameter's column is float64, even empty
        if isinstance(p, Float):
            kinds[f"params_{name}"] = "float64"
        elif isinstance(p, Int) and not frame[f"params_{name}"].isna().any():
            kinds[f"params_{name}"] = "int64"
    frame = frame.astype(kinds)
    for column in ("datetime_start", "datetime_complete"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.as_unit("us")
    frame["duration"] = pd.to_timedelta(frame["duration"]).dt.as_unit("us")
    for column in ("state", "origin"):
        frame[column] = frame[column].astype(str)
    return frame


def write_csv(trials: Sequence[FrozenTrial], names: Sequence[str], out: IO[str]) -> None:
    """The table as CSV: times in ISO 8601 (UTC), ``duration`` in seconds, empty cells for
    None; a value that is infinite (a diverged trial) is written ``inf``."""
    columns, records = table(trials, names)
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: _cell(v) for k, v in r.items()})


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, datetime):
        return iso_time(v)
    return v

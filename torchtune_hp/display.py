"""How values, parameters and trial tables are written for people (the progress lines, the
``trials`` command). No rich here: a table of ten thousand trials is written in milliseconds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torchtune_hp.trial import FrozenTrial, TrialState

# a progress bar's line: tqdm's (`` 50%|####| 10/20 [00:01<00:01]``: a percentage, the bar,
# the counts) or rich's; what tqdm writes as it closes after an exception, below the traceback
_PROGRESS_BAR = re.compile(r"\d{1,3}%\|.*\|\s*\d+(?:\.\d+)?[kMG]?/|━{4,}")


def headline(text: str | None) -> str:
    """The line that says what a failure or note is about: its last line, or the last before
    the progress bars drawn after it (a carriage return ends a line here too); only trailing
    bars are passed over, so a message that looks like one elsewhere is kept."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text or "") if line.strip()]
    while len(lines) > 1 and _PROGRESS_BAR.search(lines[-1]):
        lines.pop()
    return lines[-1] if lines else ""


NOTE_MIN = 12  # the note's least width in a terminal table


def counted(n: int, noun: str) -> str:
    """``1 report``, ``3 reports``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def fmt_value(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def fmt_param(v: Any) -> str:
    """A parameter's value as the table and progress line show it: a float as one (``1.0``,
    not the int ``1``), a string quoted where it would read as another value or break the
    line (``'1'``, ``'a\\nb'``, ``''``, ``'a=b'``), anything else as it prints."""
    if isinstance(v, float):
        text = fmt_value(v)
        return text if any(c in text for c in ".ein") else f"{text}.0"
    if isinstance(v, str):
        plain = v and v.isprintable() and v.strip() == v and not _reads_as_value(v)
        plain = plain and "," not in v and "=" not in v  # the progress line's k=v, k=v
        return v if plain else repr(v)
    return str(v)


def _reads_as_value(text: str) -> bool:
    """Whether ``text`` would read as a number, a bool or nothing (``1``, ``1e-3``, ``true``)."""
    if text.lower() in ("true", "false", "yes", "no", "on", "off", "null", "none", "~"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items())


def trial_rows(
    trials: Sequence[FrozenTrial], names: Sequence[str], metric: str
) -> tuple[list[str], list[list[str]]]:
    """The ``trials`` table: a header and one row of cells per trial. A trial's note is the
    :func:`headline` of its error (FAILED) or else of its note (one row per trial; a paused
    and resumed trial's note has a line per decision): ``trials --trial N`` and ``--format
    json`` have the whole text."""
    fixed = ["#", "state", metric, "seconds"]
    header = [*fixed, *(f"{n} (parameter)" if n in (*fixed, "note") else n for n in names), "note"]
    rows = []
    for t in trials:
        note = headline(t.error if t.state is TrialState.FAILED and t.error else t.note)
        dur = "-" if t.duration_s is None else f"{t.duration_s:.1f}"
        cells = [fmt_param(t.params[n]) if n in t.params else "-" for n in names]
        rows.append([str(t.number), t.state.value, fmt_value(t.value), dur, *cells, note])
    return header, rows


def column_widths(header: list[str], rows: list[list[str]]) -> list[int]:
    """Each column's widest cell, the header's included."""
    return [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]


def plain_table(header: list[str], rows: list[list[str]], width: int | None = None) -> str:
    """Columns padded to their widest cell; the last column (the note) is not padded. With a
    terminal's ``width``, the note is cut to what the other columns leave (the numbers never
    are), where that leaves it at least ``NOTE_MIN`` characters."""
    widths = column_widths(header, rows)[:-1]
    room = None if width is None else width - sum(w + 2 for w in widths) - 1
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        note = r[-1]
        if room is not None and room >= NOTE_MIN and len(note) > room:
            note = note[: room - 1] + "…"
        lines.append("  ".join([*cells, note]).rstrip())
    return "\n".join(lines)


def trial_detail(t: FrozenTrial, metric: str) -> str:
    """Everything about one trial, the whole error text included (``trials --trial N``)."""
    lines = [
        f"trial {t.number}: {t.state.value}"
        + (f" (interrupted: {t.interruption.value})" if t.interruption else ""),
        f"{metric}: {fmt_value(t.value)}",
        f"params: {fmt_params(t.params)}",
        f"started: {t.start}  ended: {t.end}  seconds: {fmt_value(t.duration_s)}",
    ]
    if t.intermediate:
        steps = ", ".join(f"{s}: {fmt_value(v)}" for s, v in sorted(t.intermediate.items()))
        lines.append(f"reports: {steps}")
    if t.note:
        lines.append(f"note: {t.note}")
    if t.error:
        lines.append(f"error:\n{t.error.rstrip()}")
    return "\n".join(lines)

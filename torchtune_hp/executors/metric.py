"""Reading a script's objective when it does not report: stdout JSON, stdout regex, TensorBoard.

* a final JSON line on stdout: the last line that parses as a JSON object holding the metric
  (``print(json.dumps({"val_loss": 0.31}))``);
* ``objective.metric_regex``: every match in stdout is one step (so pruning works too); the
  value is the named group ``value``, or the regex's only group;
* the script's own TensorBoard event files anywhere under the trial's run folder: the last
  value (highest step) of the tag named like the metric.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torchtune_hp.board.tags import OUR_RUNS
from torchtune_hp.outcome import parse_number

MISSING = object()


def last_json_value(text: str, metric: str) -> Any:
    """The metric's value in the last JSON-object line of stdout that holds it, as written
    (the study decides whether it is a number); ``MISSING`` when no line holds it."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and metric in obj:
            return obj[metric]
    return MISSING


def json_keys(text: str) -> list[str]:
    keys: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict):
                keys |= set(obj)
    return sorted(keys)


def compile_metric_regex(pattern: str) -> re.Pattern[str]:
    regex = re.compile(pattern)
    if "value" not in regex.groupindex and regex.groups != 1:
        raise ValueError(
            "metric_regex needs a group around the number, named value: "
            r"'valid loss\s+(?P<value>[0-9.eE+-]+)'"
        )
    return regex


def regex_capture(match: re.Match[str]) -> str:
    group = "value" if "value" in match.re.groupindex else 1
    return match.group(group) or ""


def regex_value(match: re.Match[str]) -> float | None:
    """The number a match captured; None when the capture is not a number (``(computing)``):
    such a match is not a report."""
    return parse_number(regex_capture(match))


def closest_lines(text: str, pattern: str, metric: str, n: int = 3) -> list[str]:
    """When ``metric_regex`` matched nothing: the stdout lines that share the most words with
    the regex's own text and the metric's name (``valid loss  6.77`` for a regex written with
    one space), so the fix is visible in the message."""
    literal = re.sub(r"\(\?P<\w+>|\\[a-zA-Z]", " ", pattern)
    words = {
        w.lower() for w in re.findall(r"[A-Za-z]{3,}", f"{literal} {metric}".replace("_", " "))
    }
    scored = []
    for line in text.splitlines():
        low = line.lower()
        score = sum(w in low for w in words)
        if score:
            scored.append((-score, len(scored), line.strip()[:120]))
    return [line for _, _, line in sorted(scored)[:n]]


def tensorboard_last(
    run_dir: Path, metric: str, since: float = 0.0
) -> tuple[float | None, list[str]]:
    """The metric's last value in the event files under ``run_dir`` written since ``since``
    (a wall-clock time: files left there before the trial's process started are not its
    output), and every scalar tag seen (for the error message when it is missing)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    fresh = set()
    for root, dirs, names in os.walk(run_dir):
        if root == str(run_dir):  # the board's own sessions are not the script's output
            dirs[:] = [d for d in dirs if d not in OUR_RUNS]
        for name in names:
            try:
                if "tfevents" in name and os.path.getmtime(os.path.join(root, name)) >= since:
                    fresh.add(root)
            except OSError:  # a dangling link, a file gone meanwhile: not readable output
                continue
    best: tuple[int, float, float] | None = None  # (step, wall_time, value)
    tags: set[str] = set()
    try:
        mux = EventMultiplexer(size_guidance={"scalars": 0})
        for folder in sorted(fresh):
            mux.AddRun(folder, name=folder)
        mux.Reload()
        for run, run_tags in mux.Runs().items():
            scalars = run_tags.get("scalars", [])
            tags |= set(scalars)
            if metric in scalars:
                for event in mux.Scalars(run, metric):
                    key = (event.step, event.wall_time, event.value)
                    if best is None or key[:2] > best[:2]:
                        best = key
    except Exception:  # files a script wrote that TensorBoard cannot read are not a report
        return None, sorted(tags)
    return (None if best is None else best[2]), sorted(tags)

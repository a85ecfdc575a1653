"""Reading a script's objective when it does not report: stdout JSON, stdout regex, TensorBoard.

* a final JSON line on stdout: the last line that parses as a JSON object holding the metric
  (``print(json.dumps({"val_loss": 0.31}))``);
* ``objective.metric_regex``: every match in stdout is one step (so pruning works too); the
  value is the named group ``value``, else the first group, else the whole match;
* the script's own TensorBoard event files anywhere under the trial's run folder: the last
  value (highest step) of the tag named like the metric.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def last_json_value(text: str, metric: str) -> float | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and metric in obj:
            try:
                return float(obj[metric])
            except (TypeError, ValueError):
                return math.nan
    return None


def json_keys(text: str) -> list[str]:
    keys: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                keys |= set(obj)
    return sorted(keys)


def compile_metric_regex(pattern: str) -> re.Pattern[str]:
    regex = re.compile(pattern)
    if regex.groups > 1 and "value" not in regex.groupindex:
        raise ValueError("metric_regex with several groups needs one named (?P<value>...)")
    return regex


def regex_value(match: re.Match[str]) -> float:
    if "value" in match.re.groupindex:
        return float(match.group("value"))
    return float(match.group(1) if match.re.groups else match.group(0))


def tensorboard_last(run_dir: Path, metric: str) -> tuple[float | None, list[str]]:
    """The metric's last value in any event file under ``run_dir``, and every scalar tag seen
    (for the error message when it is missing)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(run_dir))
    mux.Reload()
    best: tuple[int, float, float] | None = None  # (step, wall_time, value)
    tags: set[str] = set()
    for run, run_tags in mux.Runs().items():
        scalars = run_tags.get("scalars", [])
        tags |= set(scalars)
        if metric in scalars:
            for event in mux.Scalars(run, metric):
                key = (event.step, event.wall_time, event.value)
                if best is None or key[:2] > best[:2]:
                    best = key
    return (None if best is None else best[2]), sorted(tags)

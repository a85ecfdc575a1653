"""Lengths of time as users write them: seconds as a number, or ``90s``, ``30m``, ``8h``,
``1d``, ``1h30m``. A study left overnight is given ``8h``, not ``28800``; one parser serves
every key that takes a time (``study.timeout``, ``objective.timeout``) and ``optimize``."""

from __future__ import annotations

import datetime
import math
import numbers
import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([dhms])")
FORMS = "seconds as a number, or a duration such as 90s, 30m, 8h, 1d or 1h30m"


def seconds(value: object) -> float:
    """``value`` in seconds, > 0 (a ``datetime.timedelta`` too); a ValueError naming the
    accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {FORMS}, got {value!r}")
    if isinstance(value, datetime.timedelta):
        total = value.total_seconds()
    elif isinstance(value, numbers.Real):  # numpy's numbers too
        total = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        parts = _PART.findall(text)
        if not parts or _PART.sub("", text).strip():
            bare = re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", text)  # "90": which unit was meant?
            unit = f" (a number in a string: {text} or '{text}s' for seconds)" if bare else ""
            raise ValueError(f"expected {FORMS}, got {value!r}{unit}")
        total = sum(float(n) * _UNITS[unit] for n, unit in parts)
    else:
        raise ValueError(f"expected {FORMS}, got {value!r}")
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"expected a time > 0 ({FORMS}), got {value!r}")
    return total


def shown(total: float) -> str:
    """``total`` seconds as a reader takes it in: ``8h``, ``1h30m``, ``45s``, ``2.5s``."""
    if total < 60:
        return f"{total:g}s"
    whole = round(total)
    out = ""
    for unit in ("d", "h", "m", "s"):
        n, whole = divmod(whole, int(_UNITS[unit]))
        if n:
            out += f"{n}{unit}"
    return out

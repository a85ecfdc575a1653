"""Search spaces: what a hyperparameter may be, and its place in the unit cube.

Notation: every non-fixed parameter owns one coordinate ``u`` in ``[0, 1]``. Samplers work in
that cube (random, Sobol and the GP alike) and :meth:`Space.decode` turns a point back into a
plain ``dict`` of Python values. Fixed parameters own no coordinate; they are passed through.

* ``Float(low, high, log)``: ``u = (t(x) - t(low)) / (t(high) - t(low))`` with ``t = log`` when
  ``log=True``, else the identity. An optional ``step`` snaps values to ``low + k * step``.
* ``Int(low, high, log, step)``: relaxed to the interval ``[low - step/2, high + step/2]`` so
  that a uniform ``u`` gives every integer the same chance, then rounded onto the step grid.
* ``Categorical(choices)``: choice ``i`` of ``k`` owns the slice ``[i/k, (i+1)/k)``; it encodes
  to the slice's centre ``(i + 0.5) / k``.
"""

from __future__ import annotations

import decimal
import functools
import itertools
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchtune_hp.options import check_choice, closest

Value = Any


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def last_step(low: float, high: float, step: float) -> int:
    """How many whole steps from ``low`` stay within ``high``: the grid's last index (exact for
    integers; for floats forgiving the rounding of the division, 0.3 / 0.1 = 2.9999999999999996)."""
    if all(isinstance(v, int) for v in (low, high, step)):
        return int((high - low) // step)
    return math.floor((high - low) / step + 1e-9)


@functools.lru_cache(maxsize=256)
def _grid_decimals(low: float, step: float) -> int:
    """The decimals that write ``low`` and ``step`` exactly (0.1 -> 1, 2.5e-3 -> 4): every
    point of the grid has no more."""

    def decimals(v: float) -> int:
        exponent = decimal.Decimal(repr(float(v))).as_tuple().exponent
        return -exponent if isinstance(exponent, int) else 0

    return max(decimals(low), decimals(step))


def _check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if not isinstance(log, bool):  # "false" would read as true
        raise TypeError(f"log must be true or false, got {log!r}")
    if low > high:
        raise ValueError(f"low must be < high, got low={low!r} high={high!r}")
    if low == high:  # a range of one value tunes nothing: say how to hold a value instead
        raise ValueError(
            f"low must be < high, got low = high = {low!r}; to hold the parameter at one "
            f"value, make it fixed: {{type: fixed, value: {low!r}}} (Python: Fixed({low!r}))"
        )
    if log and low <= 0:
        raise ValueError(f"log=True needs low > 0, got low={low!r}")
    if not math.isfinite(high - low):  # the samplers scale by the width
        raise ValueError(f"high - low must be finite, got low={low!r} high={high!r}")
    if step is not None:
        if step <= 0:
            raise ValueError(f"step must be > 0, got step={step!r}")
        if log and step != 1:
            raise ValueError("step and log=True cannot be combined")
        if step > high - low:
            raise ValueError(f"step={step!r} is larger than high - low = {high - low!r}")
        top = low + last_step(low, high, step) * step  # an Int's stays an int
        top = top if isinstance(top, int) else float(f"{top:.12g}")
        if top < high and abs(high - top) > 1e-9 * max(abs(high), step):
            warnings.warn(  # as Optuna does: the range is kept, its top is never suggested
                f"high={high!r} is not on the step grid from low={low!r} (step {step!r}): the "
                f"largest value ever tried is {top!r}",
                UserWarning,
                stacklevel=4,
            )


EXACT_INT = 2**53  # the largest magnitude up to which every integer is a float


def _clip01(u: float) -> float:
    return min(max(float(u), 0.0), 1.0)


@dataclass(frozen=True)
class Float:
    """A real-valued hyperparameter in ``[low, high]``, log-scaled when ``log=True``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        _finite("low", self.low)
        _finite("high", self.high)
        if self.step is not None:
            _finite("step", self.step)
        _check_bounds(self.low, self.high, self.log, self.step)

    def _t(self, x: float) -> float:
        return math.log(x) if self.log else x

    def encode(self, value: Value) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        return _clip01((self._t(float(value)) - lo) / (hi - lo))

    def decode(self, u: float) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        t = lo + _clip01(u) * (hi - lo)
        return self.snap(math.exp(t) if self.log else t)

    def snap(self, x: float) -> float:
        """``x`` within the bounds and, with a ``step``, on its grid: the very float every
        suggestion of that point is, so a point given by hand (0.3) and one suggested are the
        same point: ``low + k * step`` rounded to the decimals of ``low`` and ``step`` (0.3,
        not 0.30000000000000004, in the table, best.yaml and TensorBoard)."""
        if self.step is not None:
            k = round((x - self.low) / self.step)
            kmax = last_step(self.low, self.high, self.step)
            x = round(
                self.low + min(max(k, 0), kmax) * self.step, _grid_decimals(self.low, self.step)
            )
        return min(max(x, self.low), self.high)

    def contains(self, value: Value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step  # on the step grid, as every suggestion is
        return abs(k - round(k)) <= 1e-6

    def grid(self, resolution: int) -> list[float]:
        points = [self.decode(i / (resolution - 1)) for i in range(resolution)]
        return list(dict.fromkeys(points))


@dataclass(frozen=True)
class Int:
    """An integer hyperparameter in ``[low, high]`` (both included), on a ``step`` grid."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    object.__setattr__(self, name, int(v))
                else:
                    raise TypeError(f"{name} must be an integer, got {v!r}")
        for name in ("low", "high"):
            if abs(getattr(self, name)) > EXACT_INT:
                raise ValueError(
                    f"{name} must be within +-2**53 (every integer exact as a float, as the "
                    f"samplers compute), got {getattr(self, name)!r}"
                )
        _check_bounds(self.low, self.high, self.log, self.step)

    def _span(self) -> tuple[float, float]:
        lo, hi = self.low - 0.5 * self.step, self.high + 0.5 * self.step
        if self.log:
            return math.log(max(lo, 0.5 * self.low)), math.log(hi)
        return lo, hi

    def encode(self, value: Value) -> float:
        lo, hi = self._span()
        t = math.log(value) if self.log else float(value)
        return _clip01((t - lo) / (hi - lo))

    def decode(self, u: float) -> int:
        lo, hi = self._span()
        t = lo + _clip01(u) * (hi - lo)
        x = math.exp(t) if self.log else t
        k = round((x - self.low) / self.step)
        kmax = last_step(self.low, self.high, self.step)
        return int(self.low + min(max(k, 0), kmax) * self.step)

    def contains(self, value: Value) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def grid(self, resolution: int) -> list[int]:
        """``resolution`` points spread evenly (in log space for ``log=True``), deduplicated."""
        n_values = (self.high - self.low) // self.step + 1
        if n_values <= resolution:
            return [self.low + k * self.step for k in range(n_values)]
        lo, hi = self.low, self.high
        if self.log:
            points = [
                math.exp(math.log(lo) + i / (resolution - 1) * (math.log(hi) - math.log(lo)))
                for i in range(resolution)
            ]
        else:
            points = [lo + i / (resolution - 1) * (hi - lo) for i in range(resolution)]
        snapped = [self.low + round((p - self.low) / self.step) * self.step for p in points]
        return list(dict.fromkeys(min(max(int(p), lo), hi) for p in snapped))


@dataclass(frozen=True)
class Categorical:
    """One of a list of distinct choices (strings, numbers, booleans or None)."""

    choices: tuple[Value, ...]

    def __init__(self, choices: Sequence[Value]) -> None:
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise TypeError(f"choices must be a list, got {choices!r}")
        if len(choices) == 0:
            raise ValueError("choices must not be empty")
        choices = [plain(c) for c in choices]  # a list made with numpy: its Python values
        for c in choices:
            if not (c is None or isinstance(c, (str, int, float, bool))):
                raise TypeError(f"choices must be str, int, float, bool or None, got {c!r}")
            if isinstance(c, float) and not math.isfinite(c):
                raise ValueError(f"choices must be finite numbers, got {c!r}")
        keys = [_choice_key(c) for c in choices]
        dups = sorted({repr(c) for c, k in zip(choices, keys, strict=True) if keys.count(k) > 1})
        if dups:
            raise ValueError(f"choices must be distinct, repeated: {', '.join(dups)}")
        object.__setattr__(self, "choices", tuple(choices))

    def index(self, value: Value) -> int:
        key = _choice_key(value)
        for i, c in enumerate(self.choices):
            if _choice_key(c) == key:
                return i
        raise ValueError(f"{value!r} is not one of {list(self.choices)!r}")

    def encode(self, value: Value) -> float:
        return (self.index(value) + 0.5) / len(self.choices)

    def decode(self, u: float) -> Value:
        k = len(self.choices)
        return self.choices[min(int(_clip01(u) * k), k - 1)]

    def contains(self, value: Value) -> bool:
        try:
            self.index(value)
        except ValueError:
            return False
        return True

    def grid(self, resolution: int) -> list[Value]:
        return list(self.choices)


def _not_in(p: Param, v: Value) -> str:
    """How ``v`` misses ``p``: not a number, outside its range, not an integer, inside the
    range but off its step grid (0.3 for a step of 0.25 is not 'outside' [0, 1]), or not one
    of its choices."""
    if not isinstance(p, Float | Int):
        return "not among the choices of" if isinstance(p, Categorical) else "not the value of"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "not a number for"
    if not p.low <= v <= p.high:
        return "outside"
    return (
        "not an integer for"
        if isinstance(p, Int) and isinstance(v, float)
        else "off the step grid of"
    )


def _choice_key(value: Value) -> tuple[str, Value]:
    """Tell ``True`` from ``1`` and ``1`` from ``1.0``, which Python's ``==`` equates."""
    return (type(value).__name__, value)


@dataclass(frozen=True)
class Fixed:
    """A constant passed to the objective with the tuned values; it owns no coordinate."""

    value: Value

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")

    def contains(self, value: Value) -> bool:
        return _choice_key(value) == _choice_key(self.value)

    def grid(self, resolution: int) -> list[Value]:
        return [self.value]


Param = Float | Int | Categorical | Fixed
Tunable = Float | Int | Categorical


def plain(value: Any) -> Any:
    """A numpy or torch scalar (``np.int64(4)``, ``torch.tensor(0.5)``, ``np.str_('adam')``) as
    the Python value it holds, anything else as it is: a point built with numpy is as good as
    one typed in. numpy's str and float64 are subclasses of Python's, equal to the value they
    hold, but a choice is told apart by its type (``1`` is not ``1.0``), so they are converted
    too."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    item = getattr(value, "item", None)
    if not callable(item):
        return value
    try:
        return item()
    except (TypeError, ValueError, RuntimeError):  # not one number (a longer array)
        return value


@dataclass(frozen=True)
class Space:
    """An ordered mapping of names to parameters, with the unit-cube encoding of a whole point."""

    params: Mapping[str, Param] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("a search space needs at least one parameter")
        for name, p in self.params.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
            if not isinstance(p, (Float, Int, Categorical, Fixed)):
                raise TypeError(
                    f"parameter {name!r} must be Float, Int, Categorical or Fixed, got {p!r}"
                )
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def of(cls, space: Space | Mapping[str, Param]) -> Space:
        return space if isinstance(space, Space) else cls(space)

    def canonical(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with each stepped float on its grid as a suggestion of it is written now
        (a study stored by an earlier version holds 0.30000000000000004 where a suggestion is
        0.3 today): a point already tried is known as tried. ``params`` itself where nothing
        changes (the common case: no copy)."""
        out = None
        for name, p in self.params.items():
            value = params.get(name)
            if isinstance(p, Float) and p.step is not None and isinstance(value, float):
                grid = p.snap(value) if p.contains(value) else value
                if grid != value:
                    out = dict(params) if out is None else out
                    out[name] = grid
        return params if out is None else out

    @property
    def tunable(self) -> dict[str, Tunable]:
        """The parameters that own a coordinate, in order."""
        return {k: p for k, p in self.params.items() if not isinstance(p, Fixed)}

    @property
    def dim(self) -> int:
        return len(self.tunable)

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def encode(self, params: Mapping[str, Value]) -> list[float]:
        """A point as its ``dim`` unit-cube coordinates (fixed parameters dropped)."""
        return [p.encode(params[name]) for name, p in self.tunable.items()]

    def decode(self, u: Sequence[float]) -> dict[str, Value]:
        """``dim`` coordinates back to a full parameter dict, fixed values included."""
        if len(u) != self.dim:
            raise ValueError(f"expected {self.dim} coordinates, got {len(u)}")
        it = iter(u)
        return {
            name: p.value if isinstance(p, Fixed) else p.decode(next(it))
            for name, p in self.params.items()
        }

    def validate(self, params: Mapping[str, Value], partial: bool = False) -> dict[str, Value]:
        """Check a user-given point (``enqueue``/``add``); fill in fixed values. ``partial``:
        parameters left out stay out (the sampler draws them), instead of an error."""
        if not isinstance(params, Mapping):  # enqueue([("opt", "sgd")]): not "unknown names"
            raise TypeError(
                f"expected a mapping of parameter names to values, such as "
                f"{{{next(iter(self.params), 'x')!r}: ...}}, got a {type(params).__name__}"
            )
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; the space has {list(self.params)}")
        out: dict[str, Value] = {}
        for name, p in self.params.items():
            if name not in params:
                if isinstance(p, Fixed):
                    out[name] = p.value
                    continue
                if partial:
                    continue
                raise ValueError(f"parameter {name!r} is missing")
            v = plain(params[name])
            if isinstance(p, Float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if isinstance(p, Int) and isinstance(v, float) and v.is_integer():
                v = int(v)
            if not p.contains(v):
                raise ValueError(f"parameter {name!r}={v!r} is {_not_in(p, v)} {describe(p)}")
            out[name] = p.snap(v) if isinstance(p, Float) else v
        return out

    def grid_axes(self, resolution: int | Mapping[str, int] = 5) -> list[list[Value]]:
        """Each parameter's grid values, in order: ``resolution`` values per continuous or
        integer dimension (an int for all, or a mapping per name), every choice of a
        categorical. A mapping naming no parameter is refused, with the closest name."""
        if isinstance(resolution, Mapping):
            for name in resolution:
                if name not in self.params:
                    raise ValueError(
                        f"resolution names {name!r}, not a parameter"
                        f"{closest(str(name), list(self.params))}; parameters: {list(self.params)}"
                    )
        axes = []
        for name, p in self.params.items():
            r = resolution.get(name, 5) if isinstance(resolution, Mapping) else resolution
            if isinstance(p, (Float, Int)) and (not isinstance(r, int) or r < 2):
                raise ValueError(f"grid resolution for {name!r} must be an integer >= 2, got {r!r}")
            axes.append(p.grid(r))
        return axes

    def grid(self, resolution: int | Mapping[str, int] = 5) -> list[dict[str, Value]]:
        """Every point of the grid (see :meth:`grid_axes`)."""
        names = list(self.params)
        product = itertools.product(*self.grid_axes(resolution))
        return [dict(zip(names, combo, strict=True)) for combo in product]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-able description, stored with a study so a resume can compare spaces."""
        return {name: param_to_dict(p) for name, p in self.params.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Space:
        """A stored space (a study's): its warnings were given when it was made."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return cls({name: param_from_dict(spec) for name, spec in data.items()})


_TYPES: dict[str, type] = {"float": Float, "int": Int, "categorical": Categorical, "fixed": Fixed}


def param_to_dict(p: Param) -> dict[str, Any]:
    if isinstance(p, Float):
        d: dict[str, Any] = {"type": "float", "low": p.low, "high": p.high, "log": p.log}
        if p.step is not None:
            d["step"] = p.step
        return d
    if isinstance(p, Int):
        return {"type": "int", "low": p.low, "high": p.high, "log": p.log, "step": p.step}
    if isinstance(p, Categorical):
        return {"type": "categorical", "choices": list(p.choices)}
    return {"type": "fixed", "value": p.value}


def param_from_dict(spec: Mapping[str, Any]) -> Param:
    """Build a parameter from its recipe/JSON form; raises ``ValueError``/``TypeError``
    with the offending field named."""
    kind = spec.get("type")
    check_choice("type", kind, sorted(_TYPES))
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    return _TYPES[kind](**kwargs)


def describe(p: Param) -> str:
    d = param_to_dict(p)
    kind = d.pop("type")
    return f"{kind}({', '.join(f'{k}={v!r}' for k, v in d.items())})"


def space_diff(
    old: Space, new: Space, held: Sequence[Mapping[str, Value]] | None = None
) -> list[str]:
    """Human-readable differences between two spaces; empty when they are the same. With
    ``held``, the parameters of a study's trials so far, a parameter changed within its kind
    (a range widened or moved, a choice added, a step or log scale changed) that still holds
    every one of their values is no difference: those trials are points of the new space
    too, so a study may go on with it (Optuna's trials keep their own distributions alike)."""
    return [text for _, text in space_changes(old, new, held)]


def space_changes(
    old: Space, new: Space, held: Sequence[Mapping[str, Value]] | None = None
) -> list[tuple[str, str]]:
    """:func:`space_diff`'s differences, each with the parameter it is about."""
    out = []
    removed = sorted(old.params.keys() - new.params.keys())
    added = sorted(new.params.keys() - old.params.keys())
    renamed = ""
    if len(removed) == len(added) == 1:  # the likeliest reading of one out, one in
        a, b = old.params[removed[0]], new.params[added[0]]
        if type(a) is type(b):
            renamed = (
                f" (renamed from {removed[0]!r}? the stored trials know it by its old name: "
                "a study's parameters keep their names)"
            )
    for name in removed:
        out.append((name, f"parameter {name!r} was removed (stored: {describe(old.params[name])})"))
    for name in added:
        out.append((name, f"parameter {name!r} was added ({describe(new.params[name])}){renamed}"))
    for name in old.params.keys() & new.params.keys():
        a, b = old.params[name], new.params[name]
        if param_to_dict(a) == param_to_dict(b):
            continue
        why = ""
        if held is not None and type(a) is type(b) and not isinstance(a, Fixed):
            values = [h[name] for h in held if name in h]
            outside = [v for v in values if not b.contains(v)]
            if not outside:
                continue
            n = f"{len(outside)} of the {len(values)}"
            why = f" ({n} trials so far lie outside it, such as {outside[0]!r})"
        text = f"parameter {name!r} changed: stored {describe(a)}, given {describe(b)}{why}"
        out.append((name, text))
    return sorted(out, key=lambda change: change[1])

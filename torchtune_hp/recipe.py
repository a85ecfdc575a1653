"""Recipes: YAML files that describe a study, with dotted ``key=value`` overrides.

Every problem is a :class:`ConfigError` naming the file, the dotted key and what was expected;
the CLI prints it and exits with code 2. Sections::

    description: one line shown by `torchtune-hp ls`
    study:     {name, metric, mode, trials, seed, fail_fast, timeout}
    space:     {<param>: {type: float|int|categorical|fixed, ...}}
    sampler:   {name: gp|random|sobol|grid, <option>: ...}
    pruner:    {name: none|median|asha|gp, <option>: ...}
    objective: {function: file.py:train | package.module:train}
               or {command: [python, train.py], args: argparse|equals|hydra|lightning_cli,
                   rename: {lr: model.learning_rate}, metric_regex: ..., timeout: 600}
    train:     {<keyword>: <value>}   # fixed arguments passed to the objective
    tensorboard: {enabled: true, images_every: 5}
    executor:  {name: local, workers: 1, devices: auto|cpu|[0, 1], trials_per_device: 1,
                devices_per_trial: 1}
               or {name: ray, workers: 8, address: auto|local|host:port,
                   resources_per_trial: {cpu: 1, gpu: 0}}
    logdir:    logs
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.resources
import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from torchtune_hp import durations
from torchtune_hp.errors import ConfigError, StudyMismatch
from torchtune_hp.executors.address import check_address
from torchtune_hp.files import check_study_name
from torchtune_hp.objective import load_objective
from torchtune_hp.options import OptionError, closest, option_named
from torchtune_hp.pruners import make_pruner, pruner_class
from torchtune_hp.samplers import make_sampler, sampler_options
from torchtune_hp.space import _TYPES, Param, Space
from torchtune_hp.study import MAX_SEED


class DuplicateKey(yaml.YAMLError):
    def __init__(self, path: str, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} is given twice, on lines {first} and {second}")
        self.path = path  # dotted, e.g. ``space.lr.low``


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; recipes mean a number. A key given twice in one
    mapping is refused (YAML would keep the last silently), by its dotted path."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._refuse_repeated_keys(node, "", set())
        return super().construct_document(node)

    def _refuse_repeated_keys(self, node: yaml.Node, path: str, visited: set[int]) -> None:
        if id(node) in visited:  # an alias met again
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_repeated_keys(item, f"{path}[{i}]", visited)
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # a mapping or list as a key (SafeLoader reports it), or ``<<``
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            here = f"{path}.{key}" if path else str(key)
            if key in seen:
                raise DuplicateKey(here, key, seen[key], line)
            seen[key] = line
            self._refuse_repeated_keys(value_node, here, visited)


# Numbers as YAML 1.2 reads them: ``1:30`` is not 90 (YAML 1.1's base 60: a study.timeout
# of 90 s where 1 h 30 was meant) but the text, which the key's own check then refuses, and
# ``010`` is 10, not octal 8; ``0x1f`` and ``0o17`` stay hexadecimal and octal.
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)


def _integer(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    return int(text, 0 if text[:2] in ("0x", "0o") else 10)


_Loader.add_constructor(_INT, _integer)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# -- the schema ---------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StudySection(_Section):
    name: StrictStr
    metric: StrictStr = Field("val_loss", min_length=1)
    mode: Literal["min", "max"] = "min"
    trials: StrictInt = Field(20, ge=1)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    fail_fast: StrictInt = Field(3, ge=0)  # stop when the first N trials fail alike; 0 = never
    # no new trial after this long (from the run's start); the running ones end as they do
    timeout: float | None = None

    _a_time = field_validator("timeout", mode="before")(lambda v: a_duration(v))

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_study_name(name)

    @field_validator("metric")
    @classmethod
    def _a_metric(cls, metric: str) -> str:
        return not_blank(metric, "a metric's name")


def a_duration(value: object) -> float | None:
    """A ``timeout`` key: seconds, or ``8h``/``30m``/``1h30m`` (see :mod:`durations`)."""
    return None if value is None else durations.seconds(value)


def not_blank(value: str, what: str) -> str:
    """Refuse a string of spaces alone: YAML's ``logdir: " "`` would make a folder named by
    blanks, a metric never found."""
    if value and not value.strip():
        raise ValueError(f"expected {what}, got only blanks: {value!r}")
    return value


class _ChoiceSection(BaseModel):
    """``name`` plus that choice's own options, which the chosen class itself checks."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: StrictStr

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SamplerSection(_ChoiceSection):
    name: StrictStr = "random"


class PrunerSection(_ChoiceSection):
    name: StrictStr = "none"


class ObjectiveSection(_Section):
    """Either ``function`` (called in-process, or in worker processes when
    ``executor.workers > 1`` or a ``timeout`` is set) or ``command`` (a script run per trial; see
    :mod:`torchtune_hp.executors.argv` for ``args`` and ``rename``)."""

    function: StrictStr | None = None
    command: list[StrictStr] | None = Field(None, min_length=1)
    args: Literal["argparse", "equals", "hydra", "lightning_cli"] = "argparse"
    rename: dict[StrictStr, StrictStr] = {}
    metric_regex: StrictStr | None = None
    timeout: float | None = None  # per trial, then the trial is killed

    _a_time = field_validator("timeout", mode="before")(lambda v: a_duration(v))

    @field_validator("command", mode="before")
    @classmethod
    def _words(cls, command: Any) -> Any:
        """A number in the command (``[python, train.py, --epochs, 4]``: YAML reads ``4`` as
        an int) is the word it reads as; a YAML bool or null is refused with the quoting that
        keeps it a word."""
        if not isinstance(command, list):
            return command
        words = []
        for i, word in enumerate(command):
            if isinstance(word, bool) or word is None:
                raise ValueError(
                    f"element {i} reads as {word!r}, not a word: put it in quotes in the YAML "
                    "to pass it as written"
                )
            words.append(str(word) if isinstance(word, (int, float)) else word)
        return words

    @field_validator("function")
    @classmethod
    def _a_reference(cls, ref: str | None) -> str | None:
        if ref is not None and not re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", ref):
            raise ValueError(
                f"expected file.py:function (a file beside the recipe) or "
                f"package.module:function, got {ref!r}"
            )
        return ref

    @model_validator(mode="after")
    def _one_kind(self) -> ObjectiveSection:
        if (self.function is None) == (self.command is None):
            raise ValueError("give exactly one of objective.function and objective.command")
        return self


class TrialResources(_Section):
    """What Ray reserves for each trial (``executor.name: ray``)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class ExecutorSection(_Section):
    """``name: local`` (this machine: ``devices``, ``trials_per_device``,
    ``devices_per_trial``) or ``name: ray`` (a Ray cluster: ``address``,
    ``resources_per_trial``); ``workers``: trials at once, for both."""

    name: Literal["local", "ray"] = "local"
    workers: StrictInt = Field(1, ge=1)
    devices: Literal["auto", "cpu"] | list[Annotated[StrictInt, Field(ge=0)]] = "auto"
    trials_per_device: StrictInt = Field(1, ge=1)
    devices_per_trial: StrictInt = Field(1, ge=1)
    address: StrictStr = "auto"  # ray: auto (the running cluster), local, or host:port
    resources_per_trial: TrialResources = TrialResources()

    @field_validator("address")
    @classmethod
    def _an_address(cls, address: str) -> str:
        return check_address(address)

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, devices: object) -> object:
        """One message for the three forms (the union's own said each form's failure, two
        lines of its internals)."""
        if devices in ("auto", "cpu") and isinstance(devices, str):
            return devices
        if isinstance(devices, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices
        ):
            return devices
        near = closest(devices, ["auto", "cpu"]) if isinstance(devices, str) else ""
        raise ValueError(
            "expected auto, cpu or a list of GPU positions (integers >= 0, e.g. [0, 1]), "
            f"got {devices!r}{near}"
        )

    @property
    def only_for(self) -> dict[str, str]:
        """The keys set to something other than their default that belong to the other kind
        of executor, and that kind (a default, like a built-in recipe's ``devices: auto``,
        says nothing and does not stand in the way of ``executor.name=ray``)."""
        local = {"devices", "trials_per_device", "devices_per_trial"}
        ray = {"address", "resources_per_trial"}
        other = ray if self.name == "local" else local
        kind = "ray" if self.name == "local" else "local"
        fields = type(self).model_fields
        return {
            key: kind
            for key in sorted(self.model_fields_set & other)
            if getattr(self, key) != fields[key].get_default(call_default_factory=True)
        }


class TensorBoardSection(_Section):
    enabled: StrictBool = True
    images_every: StrictInt = Field(5, ge=0)  # views, GP pictures every N trials; 0 = never


class RecipeModel(_Section):
    description: StrictStr = ""
    study: StudySection
    space: dict[StrictStr, dict[StrictStr, Any]]
    sampler: SamplerSection = SamplerSection()
    pruner: PrunerSection = PrunerSection()
    objective: ObjectiveSection
    train: dict[StrictStr, Any] = {}
    tensorboard: TensorBoardSection = TensorBoardSection()
    executor: ExecutorSection = ExecutorSection()
    logdir: StrictStr = Field("logs", min_length=1)  # empty would be the current folder

    @field_validator("logdir")
    @classmethod
    def _a_folder(cls, logdir: str) -> str:
        """``~`` and ``$VAR`` are expanded as a shell would (a folder named ``~`` in the
        current one invites a later ``rm -rf ~``); a variable that is not set is refused."""
        expanded = os.path.expandvars(os.path.expanduser(not_blank(logdir, "a folder")))
        unset = re.search(r"\$(\w+|\{[^}]*\})", expanded)
        if unset:
            raise ValueError(f"the environment variable {unset.group(0)} is not set")
        return expanded


@dataclasses.dataclass
class Recipe:
    """A validated recipe: the model, the built space, and where it came from."""

    path: Path
    model: RecipeModel
    space: Space
    raw: dict[str, Any]
    overrides: tuple[str, ...] = ()  # the command line's key=value, as given

    def mismatch(self, error: StudyMismatch) -> StudyMismatch:
        """``error`` (its study refused this recipe's) naming this file, the keys that differ
        and those the command line set, as every other recipe error does."""
        keys = ", ".join(error.keys)
        given = _set_by(self.overrides, error.keys)
        cli = f" (set on the command line: {', '.join(given)})" if given else ""
        where = f"{self.path}: {keys}{cli}: " if keys else f"{self.path}: "
        return StudyMismatch(f"{where}{error}", error.keys)

    @property
    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False, allow_unicode=True)

    def objective(self) -> Callable[..., Any]:
        function = self.model.objective.function
        assert function is not None, "a command objective has no function"
        return load_objective(self.path, function, self.model.train)


# -- loading ------------------------------------------------------------------------------


def builtin_dir() -> Path:
    return Path(str(importlib.resources.files("torchtune_hp.recipes")))


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    """A path to an existing file, else a built-in recipe by name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if name_or_path in builtin:
        return builtin[name_or_path]
    # a bare name gets the closest built-in one; a path, the closest file beside it
    if path.parent == Path(".") and not path.suffix:
        files_named = [f"{name_or_path}{ext}" for ext in (".yaml", ".yml")]
        here = [f for f in files_named if Path(f).is_file()]  # `run o` beside o.yaml
        spelling = f" (did you mean {here[0]!r}?)" if here else closest(name_or_path, list(builtin))
    else:
        near = {p.stem: p for p in path.parent.glob("*.y*ml")} if path.parent.is_dir() else {}
        match = difflib.get_close_matches(path.stem, list(near), n=1, cutoff=0.6)  # not '.yaml'
        spelling = f" (did you mean {str(path.parent / near[match[0]].name)!r}?)" if match else ""
    builtin_copy = ""
    if path.stem in builtin:  # recipes/digits_mlp.yaml typed outside the repository
        builtin_copy = (
            f"; the built-in one is `{path.stem}` (torchtune-hp run {path.stem}), and "
            f"`torchtune-hp cp {path.stem} <folder>` copies it to edit"
        )
    raise ConfigError(
        name_or_path,
        "",
        f"no such recipe file, and no built-in recipe of that name{spelling} "
        f"(built-in: {sorted(builtin)}){builtin_copy}",
    )


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], file: Path) -> None:
    """``a.b.c=value``: split on the first ``=``, value parsed as a YAML scalar, except that a
    value with a ``#`` that YAML would read as a comment (``train.note=run #3``, ``logdir=exp
    #3``) is that text whole: on a command line it is part of the value. A key given twice,
    or a key and a key inside it, is refused (the later would silently replace the other)."""
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(file, item, "overrides must look like dotted.key=value")
        # the same key, or one inside the other (space.x.low, then space.x)
        inside = (k for k in given if f"{key}.".startswith(f"{k}.") or k.startswith(f"{key}."))
        clash = next(inside, None)
        if clash is not None:
            raise ConfigError(
                file,
                key,
                f"set twice on the command line ({given[clash]!r}, then {item!r}): the later "
                "would replace the other; give it once",
            )
        given[key] = item
        node = raw
        parts = key.split(".")
        _check_space_key(raw, parts, file)
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(file, key, f"{'.'.join(parts[: i + 1])} is not a section")
        try:
            # YAML would drop what follows a ' #' (a quoted value keeps it: YAML's own rule)
            comment = not text.startswith(("'", '"')) and re.search(r"(?:^|\s)#", text)
            node[parts[-1]] = text if comment else parse_yaml(text) if text else ""
        except yaml.YAMLError as e:
            raise ConfigError(file, key, f"cannot parse value {text!r}: {yaml_problem(e)}") from e


def _check_space_key(raw: dict[str, Any], parts: Sequence[str], file: Path) -> None:
    """``space.xx.low=0`` for a parameter the space lacks (``x`` misspelt) would add a
    parameter of no type, and the error would name ``space.xx.type``, a key never written."""
    space = raw.get("space")
    if len(parts) < 3 or parts[0] != "space" or not isinstance(space, dict):
        return
    name = parts[1]
    if name not in space:
        raise ConfigError(
            file,
            f"space.{name}",
            f"the space has no parameter {name!r}{closest(name, list(space))} (it has "
            f"{list(space)}); to add one, give it whole: space.{name}={{type: float, low: 0, "
            "high: 1}",
        )


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line: where in the text and what (PyYAML's own message quotes the text over several
    lines and names it ``<unicode string>``)."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return " ".join(str(e).split())
    mark = e.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
    if e.context and e.context_mark is not None and e.context_mark.line != mark.line:
        text += f" ({e.context} at line {e.context_mark.line + 1})"
    return text


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    path = find_recipe(str(name_or_path))
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 text (byte {e.start}): {e.reason}") from None
    except DuplicateKey as e:
        raise ConfigError(path, e.path, str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"not valid YAML: {yaml_problem(e)}") from e
    if not isinstance(raw, dict):
        raise ConfigError(path, "", f"expected a mapping of sections, got {type(raw).__name__}")
    try:
        return _checked(path, raw, overrides)
    except ConfigError as e:
        raise from_the_command_line(e, overrides) from None


@contextlib.contextmanager
def blame_overrides(recipe: Recipe) -> Iterator[None]:
    """A ConfigError raised inside (a check of the objective, the executor, the cluster)
    says so where its key is one the command line set (see :func:`from_the_command_line`)."""
    try:
        yield
    except ConfigError as e:
        raise from_the_command_line(e, recipe.overrides) from None


def from_the_command_line(e: ConfigError, overrides: Sequence[str]) -> ConfigError:
    """``e``, saying so where its key is one the command line set, not only the file."""
    given = _set_by(overrides, [e.key])
    if not given or "\n" in e.message:  # several errors: each line names its own key
        return e
    detail = e.message.removeprefix(f"{e.key}: ")  # a pydantic error's line names it
    where = "" if given == [e.key] else f": {', '.join(given)}"
    return ConfigError(e.file, e.key, f"{detail} (set on the command line{where})")


def _set_by(overrides: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The keys of ``overrides`` that set one of ``keys``, or a key inside or above one."""
    given = [o.partition("=")[0] for o in overrides]
    return [g for g in given if any(_same_key(g, key) for key in keys)]


def _same_key(override: str, key: str) -> bool:
    """Whether the dotted ``key`` of an error is the override's, or inside or above it."""
    a, b = override.split("."), key.split(".")
    n = min(len(a), len(b))
    return bool(key) and a[:n] == b[:n]


def _checked(path: Path, raw: dict[str, Any], overrides: Sequence[str]) -> Recipe:
    before = {k: (raw.get(k) or {}).get("name") for k in ("sampler", "pruner")}
    apply_overrides(raw, overrides, path)
    _drop_options_of_a_replaced_choice(raw, before, overrides)
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as e:
        raise _config_error(path, e) from None
    space = parse_space(model.space, path)
    try:
        sampler = make_sampler(model.sampler.name, 0, model.sampler.options)
    except OptionError as e:
        raise ConfigError(path, f"sampler.{e.key}", str(e)) from None
    check_space = getattr(sampler, "check_space", None)  # what the sampler needs of the space
    if check_space is not None:
        try:
            check_space(space)
        except ValueError as e:
            key = option_named(str(e), model.sampler.options) or "name"
            raise ConfigError(path, f"sampler.{key}", str(e)) from None
    try:
        make_pruner(model.pruner.name, model.pruner.options)
    except OptionError as e:
        raise ConfigError(path, f"pruner.{e.key}", str(e)) from None
    return Recipe(path=path, model=model, space=space, raw=raw, overrides=tuple(overrides))


def _drop_options_of_a_replaced_choice(
    raw: dict[str, Any], before: dict[str, Any], overrides: Sequence[str]
) -> None:
    """``sampler.name=random`` on the command line replaces a recipe's ``gp``: the recipe's gp
    options would make the new sampler fail, so they are dropped, with a warning naming them.
    Options given on the command line itself are kept and checked as usual."""
    given = {o.partition("=")[0] for o in overrides}
    for section in ("sampler", "pruner"):
        node = raw.get(section)
        if not isinstance(node, dict) or f"{section}.name" not in given:
            continue
        name = node.get("name")
        if name == before[section]:
            continue
        try:
            if section == "sampler":
                allowed = set(sampler_options(name))
            else:
                allowed = {f.name for f in dataclasses.fields(pruner_class(name))}
        except (KeyError, TypeError):
            continue  # an unknown name: validation reports it
        dropped = [
            k for k in node if k != "name" and k not in allowed and f"{section}.{k}" not in given
        ]
        for k in dropped:
            del node[k]
        if dropped:
            warnings.warn(
                f"{section}.name={name} replaces {before[section]!r}: ignoring the recipe's "
                f"{section} options {dropped}, which {name!r} does not take",
                stacklevel=3,
            )


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """The keys the recipe's schema allows at ``loc`` (a section's path)."""
    model: Any = RecipeModel
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _config_error(path: Path, err: ValidationError) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            valid = _fields_at(e["loc"][:-1])
            name = str(e["loc"][-1])
            hint = closest(name, valid)
            head, colon, rest = name.partition(":")
            if colon and head in valid:  # {cpu:64}: YAML needs a space after the colon
                hint = f" (YAML reads {name!r} as one key: write '{head}: {rest}')"
            lines.append(f"{key}: unknown key{hint}; expected one of {valid}")
            continue
        # said once is enough: our own checks' messages name what they got ("got 'x'"),
        # pydantic's name the bound ("greater than 0"), which is no sign that it was shown
        shown = e["type"] == "missing" or (
            e["type"] == "value_error" and repr(e["input"]) in e["msg"]
        )
        got = "" if shown else f" (got {e['input']!r})"
        if e["type"] == "literal_error":  # args: argprase -> did you mean 'argparse'?
            choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
            got += closest(str(e["input"]), choices)
        msg = e["msg"].removeprefix("Value error, ")  # our own checks' message, as written
        lines.append(f"{key}: {msg}{got}")
    first_key = ".".join(str(p) for p in err.errors()[0]["loc"])
    error = ConfigError(path, "", "\n  ".join(lines))
    error.key = first_key
    return error


def parse_space(spec: Mapping[str, Mapping[str, Any]], path: Path) -> Space:
    """Build each parameter with the same classes the Python API uses, so the checks (and
    their messages) are the same in both."""
    if not spec:
        raise ConfigError(path, "space", "expected at least one parameter")
    params: dict[str, Param] = {}
    for name, entry in spec.items():
        key = f"space.{name}"
        kind = entry.get("type")
        if kind not in _TYPES:
            raise ConfigError(
                path,
                f"{key}.type",
                f"expected one of {sorted(_TYPES)}{closest(str(kind), list(_TYPES))}, got {kind!r}",
            )
        fields = dataclasses.fields(_TYPES[kind])
        allowed = [f.name for f in fields]
        for k in entry:
            if k != "type" and k not in allowed:
                raise ConfigError(
                    path,
                    f"{key}.{k}",
                    f"unknown key for type {kind}{closest(k, allowed)}; expected {allowed}",
                )
        for f in fields:
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default and f.name not in entry:
                raise ConfigError(path, f"{key}.{f.name}", f"missing (type {kind} needs {allowed})")
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                params[name] = _TYPES[kind](**{k: v for k, v in entry.items() if k != "type"})
        except (TypeError, ValueError) as e:
            raise ConfigError(path, key, str(e)) from None
        for w in said:  # the parameter's own warnings, named as its errors are
            warnings.warn(f"{path}: {key}: {w.message}", w.category, stacklevel=2)
    return Space(params)


__all__ = ["ConfigError", "Recipe", "load_objective", "load_recipe"]

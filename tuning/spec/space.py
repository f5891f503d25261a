"""The search space of a sweep: which parameters each technique takes, and their distributions.

A parameter is a plain value (fixed) or one distribution, written as a one-key mapping:
``{loguniform: [low, high]}``, ``{uniform: [low, high]}``, ``{int: [low, high]}`` (bounds
inclusive), ``{logint: [low, high]}`` or ``{choice: [v1, v2, ...]}``. The schema is pydantic: a
discriminated union over those keys, and one model per technique listing the parameters it
takes, each checked (bounds and choices included) against the trial spec's type for it. The models
of the techniques are built from the registry (``tuning.trial.registry.TECHNIQUES``): a technique's
space takes ``lr``, ``weight_decay``, ``finetune`` and the parameters its entry lists.

Searchers see flat configs named ``"<technique>.<param>"`` plus ``"technique"``;
``split_config`` turns one back into ``(technique, {param: value})``.
"""
from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Optional, Union, get_args, get_origin

from pydantic import (AfterValidator, Discriminator, Field, Tag, TypeAdapter, ValidationError, create_model,
                      model_validator)

from tuning.trial import registry
from tuning.trial.registry import TechniqueInfo
from tuning.trial.spec import TECHNIQUE_NAMES, Lr, NonNegative, TechniqueSpec
from tuning.trial.specio import SpecError, Strict

Bounds = Annotated[list[float], Field(min_length=2, max_length=2)]


# ---- distributions -------------------------------------------------------------------------------
class _Dist(Strict):
    kind: ClassVar[str]

    @property
    def values(self) -> Optional[list]:
        return None

    def first(self) -> Any:
        """A value of the distribution: the low bound or the first choice."""
        return self.low if self.values is None else self.values[0]

    def to_yaml(self) -> Any:
        return self.model_dump()


class _Range(_Dist):
    needs: ClassVar[str] = "low < high"

    @property
    def bounds(self) -> list:
        return getattr(self, self.kind)

    @property
    def low(self):
        return self.bounds[0]

    @property
    def high(self):
        return self.bounds[1]

    def ok(self) -> bool:
        return self.low < self.high

    @model_validator(mode="after")
    def _ordered(self):
        if not self.ok():
            raise ValueError(f"{self.kind} needs {self.needs}, but got {self.bounds}")
        return self


class LogUniform(_Range):
    kind: ClassVar[str] = "loguniform"
    needs: ClassVar[str] = "0 < low < high"
    loguniform: Annotated[Bounds, Field(description="[low, high], 0 < low < high: log-uniform between them")]

    def ok(self) -> bool:
        return 0 < self.low < self.high


class Uniform(_Range):
    kind: ClassVar[str] = "uniform"
    uniform: Annotated[Bounds, Field(description="[low, high], low < high: uniform between them")]


class IntRange(_Range):
    kind: ClassVar[str] = "int"
    int: Annotated[list[int], Field(min_length=2, max_length=2,
                                    description="[low, high], low < high: an integer between them, both included")]


class LogInt(_Range):
    kind: ClassVar[str] = "logint"
    needs: ClassVar[str] = "1 <= low < high"
    logint: Annotated[list[int], Field(min_length=2, max_length=2, description="[low, high], 1 <= low < high: an "
                                       "integer between them on a log scale, both included")]

    def ok(self) -> bool:
        return 1 <= self.low < self.high


class Choice(_Dist):
    kind: ClassVar[str] = "choice"
    choice: Annotated[list[Any], Field(min_length=1, description="the values to choose from (grid: each one in turn)")]

    @property
    def values(self) -> list:
        return self.choice


class Fixed(_Dist):
    """A parameter set to one value (not searched)."""

    kind: ClassVar[str] = "fixed"
    value: Any

    @property
    def values(self) -> list:
        return [self.value]

    def to_yaml(self) -> Any:
        return self.value


Dist = Union[LogUniform, Uniform, IntRange, LogInt, Choice, Fixed]
RANGES = ("loguniform", "uniform", "int", "logint")
DIST_KINDS = RANGES + ("choice",)


def is_dist(value: Any) -> bool:
    """Whether a YAML value is a distribution mapping (``{loguniform: [...]}``, ``{choice: [...]}``)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DIST_KINDS


def _tag(value: Any) -> Optional[str]:
    if is_dist(value):
        return f"<{next(iter(value))}>"
    if isinstance(value, dict):
        return None                           # a mapping that is no distribution
    return "<list>" if isinstance(value, list) else "<value>"


def _no_list(value: list):
    raise ValueError(f"a list is not a value; write {{choice: {value!r}}} to search over it")


def _checked_against(value_type: Any, integer: bool):
    """An after-validator: the fixed value, every choice and both bounds are values of ``value_type``."""
    adapter = TypeAdapter(value_type)

    def check(d: Any) -> Any:
        if not isinstance(d, _Dist):
            return d
        if integer and d.kind in ("loguniform", "uniform"):
            raise ValueError(f"must be an integer: use int, logint or choice, not {d.kind} {d.bounds}")
        values, what = (d.values, f"in choice {d.values}") if d.values is not None else \
            (d.bounds, f"a bound of {d.kind} {d.bounds}")
        for v in values:
            try:
                adapter.validate_python(v, strict=True)
            except ValidationError as e:
                msg = e.errors(include_url=False)[0]["msg"].replace("Input should be", "must be")
                msg = msg.removeprefix("Value error, ").removeprefix("must be ")
                got = "" if ", but got" in msg else f", but got {v!r}"
                raise ValueError(f"must be {msg}{got} ({what})") from None
        return d

    return AfterValidator(check)


def searchable(value_type: Any, integer: bool = False):
    """The type of a parameter in a search space: a value of ``value_type`` or a distribution of them."""
    members = [Annotated[m, Tag(f"<{m.kind}>")] for m in (LogUniform, Uniform, IntRange, LogInt, Choice)]
    members += [Annotated[list, AfterValidator(_no_list), Tag("<list>")], Annotated[value_type, Tag("<value>")]]
    return Annotated[Union[tuple(members)],
                     Discriminator(_tag, custom_error_type="distribution",
                                   custom_error_message="must be a value or a distribution, {loguniform|uniform|int|"
                                                        "logint: [low, high]} or {choice: [v1, ...]}"),
                     _checked_against(value_type, integer)]


# ---- the parameters each technique takes ---------------------------------------------------------
def _description(name: str) -> str:
    """A search-space field is described as the trial spec's field it searches."""
    return f"{TechniqueSpec.model_fields[name].description}; a value or a distribution"


class Space(Strict):
    """A technique's search space: the parameters given; the rest keep the trial spec's defaults."""

    model_config = Strict.model_config | {"validate_default": False}

    lr: searchable(Lr) = Field(None, description=_description("lr"))
    weight_decay: searchable(NonNegative) = Field(None, description=_description("weight_decay"))
    finetune: searchable(bool) = Field(None, description=_description("finetune"))

    def dists(self) -> dict[str, Dist]:
        """{param: distribution} of the parameters given, fixed values as ``Fixed``."""
        return {p: (v if isinstance(v, _Dist) else Fixed(value=v))
                for p in type(self).model_fields if p in self.model_fields_set for v in [getattr(self, p)]}


def _param_type(name: str) -> tuple[Any, bool]:
    """(type, integer) of a technique parameter: the trial spec's type for it, constraints included."""
    info = TechniqueSpec.model_fields[name]
    value_type = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return value_type, _is_integer(info.annotation)


def _is_integer(annotation: Any) -> bool:
    """int, Optional[int], or an Annotated int inside Optional (not bool, not Union[int, float])."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) is Union else [annotation]
    args = [get_args(a)[0] if get_origin(a) is Annotated else a for a in args]
    return args == [int]


def _technique_space(info: TechniqueInfo) -> type[Space]:
    """The search-space model of one registered technique: the common parameters plus its own."""
    fields = {}
    for name in info.params:
        value_type, integer = _param_type(name)
        fields[name] = (searchable(value_type, integer=integer),
                        Field(default=None, description=_description(name)))
    class_name = "".join(w[:1].upper() + w[1:] for w in info.name.split("_")) + "Space"     # AdamQ3rLossSpace
    return create_model(class_name, __base__=Space, __doc__=info.summary, **fields)


SPACES: dict[str, type[Space]] = {info.name: _technique_space(info) for info in registry.TECHNIQUES}


class _TechniqueSpacesBase(Strict):
    """``techniques:`` of a sweep spec; a technique set to null (e.g. in a variant) is left out."""

    model_config = Strict.model_config | {"validate_default": False}

    @model_validator(mode="after")
    def _at_least_one(self):
        if not self.dists():
            raise ValueError(f"techniques must name at least one of {list(TECHNIQUE_NAMES)} with its search "
                             f"space ({{}} for the trial defaults), but none is given")
        return self

    def dists(self) -> dict[str, dict[str, Dist]]:
        """{technique: {param: distribution}} in the registry's order."""
        return {t: space.dists() for t in TECHNIQUE_NAMES if (space := getattr(self, t, None)) is not None}


TechniqueSpaces = create_model(
    "TechniqueSpaces", __base__=_TechniqueSpacesBase, __doc__=_TechniqueSpacesBase.__doc__,
    **{name: (Optional[space], Field(default=None, description=registry.TECHNIQUES.get(name).summary))
       for name, space in SPACES.items()})


# ---- conversion for the searchers ------------------------------------------------------------
def _suggest(trial, name: str, d: Dist) -> Any:
    if d.kind == "choice":
        return trial.suggest_categorical(name, d.values)
    if d.kind in ("int", "logint"):
        return trial.suggest_int(name, d.low, d.high, log=d.kind == "logint")
    return trial.suggest_float(name, d.low, d.high, log=d.kind == "loguniform")


class OptunaSpace:
    """A define-by-run space for an Optuna trial (``study.ask()``): the technique, then that technique's
    parameters.

    Calling it suggests the parameters on the trial and returns the constants (fixed values, and the
    technique when there is only one), which the searcher merges into the trial's config
    (``{**trial.params, **constants}``). A class, not a closure, because Ray pickles the searcher, and
    with it this space, into the experiment state.
    """

    def __init__(self, spaces: dict[str, dict[str, Dist]]):
        self.spaces = spaces

    def __call__(self, trial) -> dict:
        names = list(self.spaces)
        technique = trial.suggest_categorical("technique", names) if len(names) > 1 else names[0]
        constants = {} if len(names) > 1 else {"technique": technique}
        for param, d in self.spaces[technique].items():
            key = f"{technique}.{param}"
            if d.kind == "fixed":
                constants[key] = d.value
            else:
                _suggest(trial, key, d)
        return constants


POINT = "point"        # a Ray config {"point": {...}} holds one whole point: a grid point, a confirmation run


def grid_points(spaces: dict[str, dict[str, Dist]]) -> list[dict]:
    """Every point of the grid (choices crossed per technique, fixed values included), in order."""
    points = []
    for technique, space in spaces.items():
        keys = [f"{technique}.{p}" for p in space]
        for combo in itertools.product(*(d.values for d in space.values())):
            points.append({"technique": technique, **dict(zip(keys, combo))})
    return points


def plain(value: Any) -> Any:
    """numpy / torch scalars (as a searcher may hand back) as plain Python values."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)) else value


def flat_config(config: dict) -> dict:
    """A Ray config as one flat dict: the point of ``{"point": {...}}`` (a grid point, or a confirmation
    run's ``{..., "seed", "confirms"}``: ``tuning.analysis.confirm.plan``) unwrapped, else a copy."""
    flat = dict(config)
    if isinstance(flat.get(POINT), dict):
        flat.update(flat.pop(POINT))
    return flat


def split_config(config: dict) -> tuple[str, dict]:
    """A flat Ray config (or ``{"point": {...}}``) back to ``(technique, {param: value})``."""
    flat = flat_config(config)
    technique = flat.get("technique")
    if technique is None:
        prefixes = {k.split(".", 1)[0] for k in flat if isinstance(k, str) and "." in k}
        if len(prefixes) != 1:
            raise SpecError(f"config names no technique and its keys do not name exactly one: {sorted(flat)}")
        technique = prefixes.pop()
    prefix = f"{technique}."
    return technique, {k[len(prefix):]: plain(v) for k, v in flat.items()
                       if isinstance(k, str) and k.startswith(prefix)}


def _show(d: Dist) -> str:
    if d.kind == "fixed":
        return f"= {d.value!r}"
    if d.kind == "choice":
        return "in {" + ", ".join(repr(v) for v in d.values) + "}"
    return f"~ {d.kind}[{d.low:g}, {d.high:g}]"


def describe(spaces: dict[str, dict[str, Dist]], grid: bool = False) -> str:
    """One line per technique: ``adamq3r: lr ~ loguniform[0.0005, 0.003], period in {5, 10}``."""
    lines = []
    for technique, space in spaces.items():
        parts = ", ".join(f"{p} {_show(d)}" for p, d in space.items()) or "the trial defaults"
        if grid:
            n = 1
            for d in space.values():
                n *= len(d.values)
            parts += f"  ({n} grid point{'s' if n != 1 else ''})"
        lines.append(f"{technique}: {parts}")
    return "\n".join(lines)

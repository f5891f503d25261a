"""The search space of a sweep: which parameters each technique takes, their distributions, and
their conversion for the searchers.

A technique's space maps parameters to distributions, ``{loguniform: [low, high]}``,
``{uniform: [low, high]}``, ``{int: [low, high]}`` (bounds inclusive), ``{logint: [low, high]}``,
``{choice: [v1, v2, ...]}``, or to a plain fixed value. Searchers see flat configs whose names
are ``"<technique>.<param>"`` plus ``"technique"``; ``split_config`` turns one back into
``(technique, {param: value})`` for ``SweepSpec.trial_config``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import optuna

    from .spec import SweepSpec

RANGES = ("loguniform", "uniform", "int", "logint")
DIST_KINDS = RANGES + ("choice",)

_Q3R = ("lr", "lmbda", "target_rank", "period", "weight_decay", "eps_schedule", "svd")
TECHNIQUE_PARAMS = {  # what a sweep may set per technique; `finetune` (true/false) is accepted for every one
    "adamq3r": _Q3R,
    "adam_q3r_loss": _Q3R,
    "adamw": ("lr", "weight_decay"),
    "lora": ("lr", "target_rank", "lora_rank", "weight_decay"),
    "lorita": ("lr", "depth", "alpha", "weight_decay"),
}
INT_PARAMS = {"period", "depth", "lora_rank"}


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# parameter -> (accepts a value, what it must be): the checks q3r.techniques applies to a trial
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "lmbda": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "alpha": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "target_rank": (lambda v: (_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
                    "a fraction in (0, 1] or an int rank >= 1"),
    "period": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "depth": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "lora_rank": (lambda v: v is None or (_int(v) and v >= 1), "null or an int >= 1"),
    "finetune": (lambda v: isinstance(v, bool), "true or false"),
    "eps_schedule": (lambda v: v in ("paper", "geometric"), "'paper' or 'geometric'"),
    "svd": (lambda v: v in ("warm", "exact"), "'warm' or 'exact'"),
}


@dataclass
class Dist:
    """One parameter's distribution; ``fixed`` keeps its value in ``values=[v]``."""

    kind: str                      # loguniform, uniform, int, logint, choice, fixed
    low: Any = None
    high: Any = None
    values: Optional[list] = None

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        return {self.kind: [self.low, self.high]}

    def first(self) -> Any:
        """A value of the distribution: the low bound or the first choice."""
        return self.low if self.kind in RANGES else self.values[0]


def is_dist(value: Any) -> bool:
    """Whether a YAML value is a distribution mapping (``{loguniform: [...]}``, ``{choice: [...]}``)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DIST_KINDS


# ---- parsing and checking (errors are tuning.spec.SpecError) ----------------------------------
def _fail(where: str, message: str):
    from .spec import SpecError   # spec imports this module, so import it when raising

    raise SpecError(f"{where}: {message}")


def _check_keys(technique: str, keys, where: str) -> None:
    allowed = TECHNIQUE_PARAMS[technique] + ("finetune",)
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        _fail(where, f"technique {technique!r} takes no parameter(s) {unknown}; it takes {list(allowed)}")


def check_params(technique: str, params: dict, where: str) -> None:
    """Raise unless ``technique`` takes every key of ``params`` and every value passes its rule."""
    _check_keys(technique, params, where)
    for p, v in params.items():
        check_value(p, v, f"{where}.{p}")


def check_value(param: str, value: Any, where: str, context: str = "") -> None:
    ok, what = RULES[param]
    if not ok(value):
        from .spec import SpecError

        raise SpecError(f"{where} must be {what}, but got {value!r}{context}")


def parse_dist(value: Any, param: str, where: str) -> Dist:
    """A parameter's YAML value as a ``Dist``, its bounds or choices checked against the parameter."""
    if isinstance(value, list):
        _fail(where, f"a list is not a value; write {{choice: {value!r}}} to search over it")
    if not isinstance(value, dict):
        check_value(param, value, where)
        return Dist("fixed", values=[value])
    if len(value) != 1 or next(iter(value)) not in DIST_KINDS:
        _fail(where, f"a distribution is {{loguniform|uniform|int|logint: [low, high]}} or "
                     f"{{choice: [v1, ...]}}, but got {value!r}")
    kind, arg = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            _fail(where, f"choice needs a non-empty list of values, but got {arg!r}")
        for v in arg:
            check_value(param, v, where, f" (in choice {arg!r})")
        return Dist("choice", values=list(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_num(a) for a in arg)):
        _fail(where, f"{kind} needs [low, high], but got {arg!r}")
    low, high = arg
    if kind in ("int", "logint") and not (_int(low) and _int(high)):
        _fail(where, f"{kind} needs integer bounds, but got {arg!r}")
    ok, needs = {"loguniform": (0 < low < high, "0 < low < high"), "uniform": (low < high, "low < high"),
                 "int": (low < high, "low < high"), "logint": (1 <= low < high, "1 <= low < high")}[kind]
    if not ok:
        _fail(where, f"{kind} needs {needs}, but got {arg!r}")
    if param in INT_PARAMS | {"finetune"} and kind in ("loguniform", "uniform"):
        _fail(where, f"{param} takes {RULES[param][1]}: use int, logint or choice, not {kind} {arg!r}")
    if kind in ("loguniform", "uniform"):
        low, high = float(low), float(high)
    for v in (low, high):
        check_value(param, v, where, f" (a bound of {kind} {arg!r})")
    return Dist(kind, low, high)


def parse_techniques(raw: Any, source: str) -> dict[str, dict[str, Dist]]:
    """The ``techniques`` mapping of a spec, parsed; a technique set to null is left out."""
    from q3r.techniques import TECHNIQUES

    if not isinstance(raw, dict) or not raw:
        _fail(source, f"techniques must map technique names to their search spaces, but got {raw!r}")
    out = {}
    for name, space in raw.items():
        where = f"{source}: techniques.{name}"
        if name not in TECHNIQUES or name not in TECHNIQUE_PARAMS:
            _fail(f"{source}: techniques", f"unknown technique {name!r}; known: {sorted(TECHNIQUE_PARAMS)}")
        if space is None:
            continue
        if not isinstance(space, dict):
            _fail(where, f"must map parameters to distributions or values ({{}} for defaults), but got {space!r}")
        _check_keys(name, space, where)
        out[name] = {p: parse_dist(v, p, f"{where}.{p}") for p, v in space.items()}
    if not out:
        _fail(f"{source}: techniques", "every technique was left out (null); keep at least one")
    return out


# ---- conversion for the searchers ------------------------------------------------------------
def _suggest(trial: "optuna.trial.Trial", name: str, d: Dist) -> Any:
    if d.kind == "choice":
        return trial.suggest_categorical(name, d.values)
    if d.kind in ("int", "logint"):
        return trial.suggest_int(name, d.low, d.high, log=d.kind == "logint")
    return trial.suggest_float(name, d.low, d.high, log=d.kind == "loguniform")


class OptunaSpace:
    """A define-by-run space for ``OptunaSearch``: the technique, then that technique's parameters.

    Calling it returns the constants (fixed values, and the technique when there is only one),
    which OptunaSearch merges into the trial's config. A class, not a closure, because Ray
    pickles the searcher, and with it this space, into the experiment state.
    """

    def __init__(self, techniques: dict):
        self.techniques = techniques

    def __call__(self, trial: "optuna.trial.Trial") -> dict:
        names = list(self.techniques)
        technique = trial.suggest_categorical("technique", names) if len(names) > 1 else names[0]
        constants = {} if len(names) > 1 else {"technique": technique}
        for param, d in self.techniques[technique].items():
            key = f"{technique}.{param}"
            if d.kind == "fixed":
                constants[key] = d.values[0]
            else:
                _suggest(trial, key, d)
        return constants


def optuna_space(spec: "SweepSpec") -> OptunaSpace:
    """The spec's search space as a picklable define-by-run callable (see ``OptunaSpace``)."""
    return OptunaSpace(spec.techniques)


def grid_points(spec: "SweepSpec") -> list[dict]:
    """Every point of the grid (choices crossed per technique, fixed values included), in spec order."""
    points = []
    for technique, space in spec.techniques.items():
        keys = [f"{technique}.{p}" for p in space]
        for combo in itertools.product(*(d.values for d in space.values())):
            points.append({"technique": technique, **dict(zip(keys, combo))})
    return points


def split_config(config: dict) -> tuple[str, dict]:
    """A flat Ray config (or ``{"point": {...}}``) back to ``(technique, {param: value})``."""
    from .spec import SpecError, plain

    flat = dict(config)
    if isinstance(flat.get("point"), dict):
        flat.update(flat.pop("point"))
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
        return f"= {d.values[0]!r}"
    if d.kind == "choice":
        return "in {" + ", ".join(repr(v) for v in d.values) + "}"
    return f"~ {d.kind}[{d.low:g}, {d.high:g}]"


def describe(spec: "SweepSpec") -> str:
    """One line per technique: ``adamq3r: lr ~ loguniform[0.0005, 0.003], period in {5, 10}``."""
    lines = []
    for technique, space in spec.techniques.items():
        parts = ", ".join(f"{p} {_show(d)}" for p, d in space.items()) or "the trial defaults"
        if spec.searcher.kind == "grid":
            n = 1
            for d in space.values():
                n *= len(d.values)
            parts += f"  ({n} grid point{'s' if n != 1 else ''})"
        lines.append(f"{technique}: {parts}")
    return "\n".join(lines)

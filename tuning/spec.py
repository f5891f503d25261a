"""The sweep spec: which techniques to search over, with which hyperparameter distributions, how
trials are scheduled and where they are tracked. Loaded from YAML and validated when loaded.

    name: digits-vit                      # the sweep; the default MLflow experiment name
    data / model / train: {...}           # the base trial (q3r.config sections)
    epochs, retentions, objective         # epochs and seed below win over train's
    techniques: {adamq3r: {lmbda: {loguniform: [0.3, 30]}, period: {choice: [5, 10]}, lr: 1.0e-3}}
    scheduler, searcher, num_samples, max_concurrent, resources, seed, tracking
    variants: {grid: {searcher: {kind: grid}, ...}}   # named partial specs, deep-merged over the file

Unknown keys and bad values raise ``SpecError`` naming the file, the field and the value.
``SweepSpec.trial_config(technique, params)`` is the ``q3r.config.TrialConfig`` of one trial.
The distributions (``Dist``) and the parameters each technique takes live in ``tuning.space``.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from q3r import config as trial_spec
from q3r.config import DEFAULT_RETENTIONS, ConfigError, DataConfig, ModelConfig, TrainConfig, TrialConfig
from q3r.evaluation import level_key

from .space import Dist, check_params, is_dist, parse_techniques


__all__ = ["SpecError", "Dist", "SchedulerSpec", "SearcherSpec", "ResourcesSpec", "TrackingSpec", "SweepSpec",
           "load_spec", "from_dict", "dump_spec", "apply_overrides", "objective_value"]


class SpecError(ValueError):
    """A malformed sweep spec; the message names the file, the field and the value."""


SEARCHERS = ("tpe", "multi", "random", "grid")
SCHEDULERS = ("asha", "fifo")
MANAGED = ("epochs", "retentions", "seed", "threads", "device")  # train fields the spec sets itself


@dataclass
class SchedulerSpec:
    kind: str = "asha"             # asha (early stopping of weak trials) or fifo (every trial runs to the end)
    grace_period: int = 5          # epochs before ASHA may stop a trial
    reduction_factor: float = 3.0  # ASHA keeps 1 / reduction_factor of the trials at each rung
    max_t: Optional[int] = None    # epochs of the longest trial; null = epochs


@dataclass
class SearcherSpec:
    kind: str = "tpe"              # tpe, multi (multi-objective over acc@p), random, grid


@dataclass
class ResourcesSpec:
    cpu: float = 1.0               # per trial
    gpu: float = 0.0               # per trial; a fraction shares one GPU


@dataclass
class TrackingSpec:
    uri: Optional[str] = None          # MLflow tracking URI; null = sqlite:///<cwd>/mlruns.db
    experiment: Optional[str] = None   # MLflow experiment; null = the sweep's name


@dataclass
class SweepSpec:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    techniques: dict = field(default_factory=dict)         # {technique: {param: Dist}}
    epochs: int = 30
    retentions: list = field(default_factory=lambda: list(DEFAULT_RETENTIONS))
    objective: str = "mean"                                 # "mean" or "acc@p"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    num_samples: int = 16
    max_concurrent: int = 2
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    seed: int = 0
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    source: str = field(default="<dict>", compare=False)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.epochs

    def objective_metrics(self) -> list[str]:
        """The metrics the searcher optimises (all maximised)."""
        if self.searcher.kind == "multi":
            return [f"acc@{level_key(p)}" for p in self.retentions if p < 1]
        return ["objective"]

    def trial_config(self, technique: str, params: dict) -> TrialConfig:
        """The trial of ``technique`` at ``params`` (over the space's fixed values), validated."""
        if technique not in self.techniques:
            raise SpecError(f"{self.source}: technique {technique!r} is not in this sweep; "
                            f"its techniques: {list(self.techniques)}")
        values = {p: d.values[0] for p, d in self.techniques[technique].items() if d.kind == "fixed"}
        values.update({k: plain(v) for k, v in params.items()})
        where = f"{self.source}: trial {technique}"
        check_params(technique, values, where)
        train = {**dataclasses.asdict(self.train), "epochs": self.epochs, "retentions": list(self.retentions),
                 "seed": self.seed, "threads": max(1, int(self.resources.cpu)),
                 "device": "cuda" if self.resources.gpu > 0 else "cpu"}
        raw = {"data": dataclasses.asdict(self.data), "model": dataclasses.asdict(self.model), "train": train,
               "technique": {"name": technique, **values}}
        try:
            return trial_spec.from_dict(raw, f"{self.source} [{technique}]")
        except ConfigError as e:
            raise SpecError(str(e)) from None

    def to_dict(self) -> dict:
        """A YAML-serialisable dict; ``from_dict(spec.to_dict()) == spec``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        for key in ("data", "model", "train", "scheduler", "searcher", "resources", "tracking"):
            d[key] = dataclasses.asdict(d[key])
        d["train"] = {k: v for k, v in d["train"].items() if k not in MANAGED}
        d["retentions"] = list(self.retentions)
        d["techniques"] = {t: {p: dist.to_yaml() for p, dist in space.items()} for t, space in self.techniques.items()}
        return copy.deepcopy(d)


def plain(value: Any) -> Any:
    """numpy / torch scalars (as a searcher may hand back) as plain Python values."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)) else value


# ---- validation ------------------------------------------------------------------------------
def _fail(where: str, message: str):
    raise SpecError(f"{where}: {message}")


def _typed(cls, raw: Any, where: str):
    try:
        return trial_spec._section(cls, raw, where)
    except ConfigError as e:
        raise SpecError(str(e)) from None


def _value(raw: dict, key: str, hint, source: str):
    try:
        return trial_spec._coerce(raw[key], hint, f"{source}: {key}")
    except ConfigError as e:
        raise SpecError(str(e)) from None


def _objective(objective: str, retentions: list, source: str) -> str:
    if objective == "mean":
        if not any(p < 1 for p in retentions):
            _fail(f"{source}: objective", f"mean needs a retention level < 1, but retentions are {retentions}")
        return objective
    m = re.fullmatch(r"acc@([0-9.eE+-]+)", objective)
    keys = {level_key(p) for p in retentions}
    try:
        key = level_key(float(m.group(1))) if m else None
    except ValueError:
        key = None
    if key not in keys:
        _fail(f"{source}: objective", f"must be 'mean' or 'acc@p' with p one of the retentions "
                                      f"{retentions}, but got {objective!r}")
    return f"acc@{key}"


def _build(raw: dict, source: str) -> SweepSpec:
    known = [f.name for f in dataclasses.fields(SweepSpec) if f.name != "source"]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        _fail(source, f"unknown key(s) {unknown}; known: {known + ['variants']}")
    for key in ("name", "techniques"):
        if key not in raw:
            _fail(source, f"missing required key {key!r}")
    train_raw = raw.get("train")
    if isinstance(train_raw, dict):        # train's epochs / retentions / seed serve where the top level has none
        raw = {**{k: train_raw[k] for k in ("epochs", "retentions", "seed") if k in train_raw}, **raw}
    hints = {"name": str, "epochs": int, "retentions": list, "objective": str, "num_samples": int,
             "max_concurrent": int, "seed": int}
    top = {k: _value(raw, k, hint, source) for k, hint in hints.items() if k in raw}
    spec = SweepSpec(
        data=_typed(DataConfig, raw.get("data"), f"{source}: data"),
        model=_typed(ModelConfig, raw.get("model"), f"{source}: model"),
        train=_typed(TrainConfig, train_raw, f"{source}: train"),
        techniques=parse_techniques(raw["techniques"], source),
        scheduler=_typed(SchedulerSpec, raw.get("scheduler"), f"{source}: scheduler"),
        searcher=_typed(SearcherSpec, raw.get("searcher"), f"{source}: searcher"),
        resources=_typed(ResourcesSpec, raw.get("resources"), f"{source}: resources"),
        tracking=_typed(TrackingSpec, raw.get("tracking"), f"{source}: tracking"),
        source=source, **top)
    _check(spec, source)
    spec.train.epochs, spec.train.retentions, spec.train.seed = spec.epochs, list(spec.retentions), spec.seed
    spec.train.threads = max(1, int(spec.resources.cpu))
    spec.train.device = "cuda" if spec.resources.gpu > 0 else "cpu"
    for technique, space in spec.techniques.items():      # the base trial passes q3r.config's validation
        spec.trial_config(technique, {p: d.first() for p, d in space.items()})
    return spec


def _check(spec: SweepSpec, source: str) -> None:
    from q3r.data import DATASETS

    def need(ok: bool, key: str, what: str, value: Any):
        if not ok:
            raise SpecError(f"{source}: {key} must be {what}, but got {value!r}")

    need(bool(spec.name), "name", "a non-empty string", spec.name)
    name = spec.data.name.lower()
    need(name in DATASETS or name.startswith("glue/"), "data.name", f"one of {sorted(DATASETS)}", spec.data.name)
    need(spec.epochs >= 1, "epochs", ">= 1", spec.epochs)
    need(bool(spec.retentions), "retentions", "a non-empty list", spec.retentions)
    for p in spec.retentions:
        need(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1, "retentions",
             "fractions in (0, 1]", p)
    need(len({level_key(p) for p in spec.retentions}) == len(spec.retentions), "retentions", "distinct",
         spec.retentions)
    spec.retentions = [float(p) for p in spec.retentions]
    spec.objective = _objective(spec.objective, spec.retentions, source)
    need(spec.num_samples >= 1, "num_samples", ">= 1", spec.num_samples)
    need(spec.max_concurrent >= 1, "max_concurrent", ">= 1", spec.max_concurrent)
    sch = spec.scheduler
    need(sch.kind in SCHEDULERS, "scheduler.kind", f"one of {list(SCHEDULERS)}", sch.kind)
    need(sch.grace_period >= 1, "scheduler.grace_period", ">= 1", sch.grace_period)
    need(sch.reduction_factor > 1, "scheduler.reduction_factor", "> 1", sch.reduction_factor)
    need(sch.max_t is None or 1 <= sch.max_t <= spec.epochs, "scheduler.max_t",
         f"null or in [1, epochs={spec.epochs}]", sch.max_t)
    if sch.kind == "asha":
        need(sch.grace_period <= spec.max_t, "scheduler.grace_period",
             f"<= max_t ({spec.max_t}, which is epochs when max_t is null; lower it, or use scheduler.kind=fifo)",
             sch.grace_period)
    need(spec.searcher.kind in SEARCHERS, "searcher.kind", f"one of {list(SEARCHERS)}", spec.searcher.kind)
    if spec.searcher.kind == "multi":
        need(any(p < 1 for p in spec.retentions), "retentions", "holding a level < 1 for searcher multi",
             spec.retentions)
    if spec.searcher.kind == "grid":
        for t, space in spec.techniques.items():
            for p, d in space.items():
                need(d.kind in ("choice", "fixed"), f"techniques.{t}.{p}",
                     "a choice or a fixed value for searcher grid", d.to_yaml())
    res = spec.resources
    need(res.cpu > 0, "resources.cpu", "> 0", res.cpu)
    need(res.gpu >= 0 and (res.gpu <= 1 or res.gpu == int(res.gpu)), "resources.gpu",
         ">= 0 (a fraction of one GPU, or whole GPUs)", res.gpu)


# ---- loading ---------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _merge(base: dict, over: dict) -> dict:
    """``over`` deep-merged into ``base``; a distribution replaces a value whole."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(out.get(k), dict) and isinstance(v, dict)
        out[k] = _merge(out[k], v) if both and not (is_dist(v) or is_dist(out[k])) else copy.deepcopy(v)
    return out


def _with_variant(raw: Any, source: str, variant: Optional[str]) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(source, f"a sweep spec must be a mapping, but got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        _fail(f"{source}: variants", f"must map variant names to partial specs, but got {variants!r}")
    if variant is None:
        return raw
    if variant not in variants:
        _fail(source, f"no variant {variant!r}; its variants: {sorted(variants)}")
    return _merge(raw, variants[variant])


def apply_overrides(raw: dict, overrides) -> dict:
    """"a.b=value" strings (values read as YAML) set into ``raw``: num_samples=4, scheduler.kind=fifo."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip():
            raise SpecError(f"an override is key=value (e.g. num_samples=4), but got {text!r}")
        try:
            value = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError as e:
            raise SpecError(f"override {text!r}: the value is not valid YAML: {e}") from None
        *parents, last = key.strip().split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return raw


def from_dict(d: Any, source: str = "<dict>", variant: Optional[str] = None) -> SweepSpec:
    return _build(_with_variant(d, source, variant), source)


def load_spec(path: Union[str, Path], overrides=(), variant: Optional[str] = None) -> SweepSpec:
    """Read a sweep spec from YAML, merge ``variant``, apply ``overrides``, validate."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no sweep spec at {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    raw = apply_overrides(_with_variant(raw, str(path), variant), overrides)
    return _build(raw, str(path))


def dump_spec(spec: SweepSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))


def objective_value(metrics: dict, objective: str, retentions) -> float:
    """The scalar a trial is ranked by: mean of acc@p over the levels p < 1 present, or one acc@p."""
    if objective == "mean":
        values = [metrics[k] for k in (f"acc@{level_key(p)}" for p in retentions if p < 1) if k in metrics]
        if not values:
            raise KeyError(f"objective 'mean' needs acc@p for some retention p < 1 in the metrics; "
                           f"they hold {sorted(metrics)}")
        return float(sum(values) / len(values))
    key = f"acc@{level_key(float(objective.partition('@')[2]))}"
    if key not in metrics:
        raise KeyError(f"objective {objective!r} needs {key} in the metrics; they hold {sorted(metrics)}")
    return float(metrics[key])

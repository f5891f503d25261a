"""The sweep spec: which techniques to search over, with which hyperparameter distributions, how
trials are scheduled and where they are tracked. A pydantic schema that reuses the trial spec's
sections; loaded from YAML through the same loader, validated when loaded.

    name: digits-vit                      # the sweep; the default MLflow experiment name
    data / model / train: {...}           # the base trial (tuning.trial.spec sections)
    function: "my_loop:train"             # or the user's own loop instead of data and model (model.modules only)
    epochs, retentions, metric, objective # these, and seed below, win over train's
    metric: {name: val_loss, mode: min}   # default accuracy (max); objective mean or val_loss@0.2
    techniques: {adamq3r: {lmbda: {loguniform: [0.3, 30]}, period: {choice: [5, 10]}, lr: 1.0e-3}}
    scheduler, searcher, num_samples, max_concurrent, resources, seed, tracking
    variants: {grid: {searcher: {kind: grid}, ...}}   # named partial specs, deep-merged over the file

Errors are ``SpecError`` in one line naming the file (or the ``--set`` override), the field and the
value. ``SweepSpec.trial_config(technique, params)`` is the ``TrialSpec`` of one trial.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, PrivateAttr, model_validator

from tuning.spec.space import Dist, TechniqueSpaces, is_dist, plain
from tuning.trial import spec as trial_spec
from tuning.trial.metrics import Metric, level_key, objective_key, objective_value
from tuning.trial.spec import (DEFAULT_RETENTIONS, DataSpec, Fraction, Function, MetricSpec, ModelSpec, Positive,
                               TrainSpec, TrialSpec, check_function_sections, check_recipe_metric, resolve_code_dir,
                               with_function_defaults)
from tuning.trial.specio import SpecError, Strict, apply_overrides, read_yaml, validate

__all__ = ["SpecError", "SchedulerSpec", "SearcherSpec", "ResourcesSpec", "ConfirmSpec", "TrackingSpec", "SweepSpec",
           "load_spec", "from_dict", "dump_spec", "objective_value", "json_schema"]

MANAGED = ("epochs", "retentions", "metric", "seed", "threads", "device")  # train fields the sweep sets itself
FALLBACKS = ("epochs", "retentions", "metric", "seed")                  # ... of which train's serve where the top
                                                                        # level has none


class SchedulerSpec(Strict):
    """When trials are stopped early."""

    kind: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early, comparing a trial "
                                                              "only with trials of its own technique; fifo "
                                                              "runs every trial to the end")
    grace_period: Positive = Field(5, description="asha: epochs before a trial may be stopped (the first rung)")
    reduction_factor: Annotated[float, Field(gt=1)] = Field(3.0, description="asha: keeps 1 in "
                                                                             "reduction_factor trials at each rung")
    max_t: Optional[Positive] = Field(None, description="asha: epochs of the longest trial; null: epochs")
    min_samples: Positive = Field(1, description="asha: trials of a technique recorded at a rung before it "
                                                 "stops any")


class SearcherSpec(Strict):
    """How configurations are proposed (one Optuna study per technique)."""

    kind: Literal["tpe", "gp", "multi", "random", "grid"] = Field(
        "tpe", description="tpe (Optuna TPE on the objective), gp (Optuna's Gaussian-process sampler on the "
                           "objective), multi (Optuna multi-objective over the metric at every p < 1: acc@p), "
                           "random, or grid (every combination of the choices)")
    n_startup_trials: Positive = Field(5, description="tpe / gp / multi: random trials of each technique before "
                                                      "the sampler models it")
    start_points: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="tpe / gp / multi / random: per technique, configurations tried first "
        "(e.g. the paper's settings in our units), each {param: value} for some of its searched parameters (the "
        "others are sampled); they count as start-up trials")


def check_start_points(searcher: SearcherSpec, spaces: dict) -> None:
    """Every start point names a technique of the sweep and only its searched parameters, each a value its
    distribution can take."""
    if searcher.start_points and searcher.kind == "grid":
        raise ValueError("searcher.start_points is for the samplers (tpe, gp, multi, random); grid tries every point")
    for t, points in searcher.start_points.items():
        if t not in spaces:
            raise ValueError(f"searcher.start_points names technique {t!r}, which the sweep does not search; "
                             f"its techniques: {list(spaces)}")
        for point in points:
            for p, v in point.items():
                d = spaces[t].get(p)
                if d is None or d.kind == "fixed":
                    raise ValueError(f"searcher.start_points.{t}.{p} is not a searched parameter of {t}: "
                                     f"{sorted(q for q, e in spaces[t].items() if e.kind != 'fixed')}")
                ok = v in d.values if d.kind == "choice" else \
                    isinstance(v, (int, float)) and not isinstance(v, bool) and d.low <= v <= d.high
                if not ok:
                    raise ValueError(f"searcher.start_points.{t}.{p} must be a value of {d.to_yaml()!r}, but got {v!r}")


class ResourcesSpec(Strict):
    """What each trial gets: ``workers`` processes of ``cpu`` CPUs and ``gpu`` GPUs each."""

    workers: Positive = Field(1, description="processes that train one trial together, data-parallel (Ray Train, "
                                             "DistributedDataParallel: NCCL on GPUs, gloo on CPUs); 1: one process")
    cpu: Annotated[float, Field(gt=0)] = Field(1.0, description="CPUs per worker; its torch threads: the "
                                                                                 "whole part, at least 1")
    gpu: Annotated[float, Field(ge=0)] = Field(0.0, description="GPUs per worker; a fraction (0.25) shares one GPU")

    @model_validator(mode="after")
    def _whole_or_fraction(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"resources.gpu must be >= 0 (a fraction of one GPU, or whole GPUs), "
                             f"but got {self.gpu!r}")
        return self


class ConfirmSpec(Strict):
    """Training the best configurations again with new seeds after the search."""

    top: Annotated[int, Field(ge=0)] = Field(1, description="best distinct configurations within each budget "
                                                            "of the recommendation table trained again (0: off)")
    seeds: Annotated[int, Field(ge=0)] = Field(2, description="new seeds for each of them (0: off)")


class TrackingSpec(Strict):
    """Where the sweep is tracked (MLflow)."""

    uri: Optional[str] = Field(None, description="MLflow tracking URI; null: sqlite:///<cwd>/mlruns.db")
    experiment: Optional[str] = Field(None, description="MLflow experiment; null: the sweep's name")


class SweepSpec(Strict):
    """A sweep; ``techniques`` holds each technique's search space."""

    name: Annotated[str, Field(min_length=1)] = Field(
        description="the sweep; also its MLflow experiment unless tracking.experiment says otherwise")
    data: DataSpec = Field(default_factory=DataSpec, description="the base trial's dataset (a trial spec's data)")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the base trial's model (a trial spec's "
                                                                    "model)")
    train: TrainSpec = Field(default_factory=TrainSpec,
                             description="the base trial's training (a trial spec's train); its epochs, "
                                         "retentions, metric and seed serve where the top level has none; "
                                         "threads and device come from resources")
    techniques: TechniqueSpaces = Field(description="technique -> its search space")
    epochs: Positive = Field(30, description="training epochs of a trial that is not stopped early")
    retentions: Annotated[list[Fraction], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_RETENTIONS),
        description="fractions p of each matrix's parameters kept after truncation (1.0: no truncation)")
    metric: MetricSpec = Field(default_factory=MetricSpec, description=(
        "what trials are scored and ranked by: {name, mode}; accuracy (max) by default, val_loss (min) the other "
        "built-in one; fronts, hypervolume, ASHA, the searcher, recommendations and the report follow its mode"))
    objective: str = Field("mean", description="what a trial is ranked by: mean (the mean of the metric over the "
                                               "levels p < 1) or the metric at one level of retentions: acc@p "
                                               "for accuracy (e.g. acc@0.2), else <name>@p (val_loss@0.2)")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="when trials are stopped early")
    searcher: SearcherSpec = Field(default_factory=SearcherSpec, description="how configurations are proposed")
    num_samples: Positive = Field(16, description="trials in all, split evenly over the techniques (grid: "
                                                  "repeats of the whole grid)")
    samples_per_technique: dict[str, Positive] = Field(default_factory=dict,
                                                       description="overrides of the even split, e.g. "
                                                                   "{adamq3r: 6}")
    max_concurrent: Positive = Field(2, description="trials running at once")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="what each trial gets")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the searchers and of every trial "
                                                             "(confirmation runs use seed + 1, seed + 2, ...)")
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec,
                                 description="after the search, train the best configurations again with new "
                                             "seeds; recommendations then rank by the mean over all seeds")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="where the sweep is tracked")
    function: Optional[Function] = Field(default=None, description=(
        "the user's own training loop, 'module:callable', called once per trial with the trial (see "
        "docs/byo-loop.md); instead of data and model, of which only model.modules applies"))
    code_dir: Optional[str] = Field(default=None, description=(
        "the folder searched first for function's module, and shipped to Ray's workers; null: the spec "
        "file's folder"))
    _source: str = PrivateAttr(default="<dict>")

    @model_validator(mode="before")
    @classmethod
    def _train_fallbacks(cls, data: Any) -> Any:
        """train's epochs / retentions / metric / seed serve where the top level has none."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**{k: data["train"][k] for k in FALLBACKS if k in data["train"]}, **data}
        return with_function_defaults(data)

    @model_validator(mode="after")
    def _consistent(self):
        check_function_sections(self.function, self.data, self.model)
        self.retentions = [float(p) for p in self.retentions]
        if len({level_key(p) for p in self.retentions}) != len(self.retentions):
            raise ValueError(f"retentions must be distinct, but got {self.retentions}")
        if self.function is None:               # the user's loop reports any metric; the recipe computes its own
            check_recipe_metric(self.metric)
        self.objective = objective_key(self.objective, self.retentions, self.score)
        sch = self.scheduler
        if sch.max_t is not None and sch.max_t > self.epochs:
            raise ValueError(f"scheduler.max_t must be null or in [1, epochs={self.epochs}], but got {sch.max_t}")
        if sch.kind == "asha" and sch.grace_period > self.max_t:
            raise ValueError(f"scheduler.grace_period must be <= max_t ({self.max_t}, which is epochs when max_t "
                             f"is null; lower it, or use scheduler.kind=fifo), but got {sch.grace_period}")
        every = self.train.eval_every
        if sch.kind == "asha" and every > sch.grace_period and every >= self.max_t:
            raise ValueError(f"train.eval_every must be < max_t ({self.max_t}) for scheduler asha: ASHA judges a "
                             f"trial at its evaluations, and the first would come at epoch {min(every, self.max_t)}, "
                             f"the last, so nothing could be stopped early; lower it to at most grace_period "
                             f"({sch.grace_period}), but got {every}")
        if self.searcher.kind == "multi" and not any(p < 1 for p in self.retentions):
            raise ValueError(f"retentions must hold a level < 1 for searcher multi, but got {self.retentions}")
        if self.searcher.kind == "grid":
            for t, space in self.spaces.items():
                for p, d in space.items():
                    if d.kind not in ("choice", "fixed"):
                        raise ValueError(f"techniques.{t}.{p} must be a choice or a fixed value for searcher "
                                         f"grid, but got {d.to_yaml()!r}")
        check_start_points(self.searcher, self.spaces)
        unknown = sorted(set(self.samples_per_technique) - set(self.spaces))
        if unknown:
            raise ValueError(f"samples_per_technique names technique(s) {unknown} that the sweep does not search; "
                             f"its techniques: {list(self.spaces)}")
        workers = self.resources.workers
        if workers > 1 and self.train.batch_size % workers:
            raise ValueError(f"train.batch_size must be a multiple of resources.workers ({workers}): the global batch "
                             f"is split evenly over the workers, but got batch_size={self.train.batch_size}")
        if workers > 1 and 0 < self.resources.gpu < 1:
            raise ValueError(f"resources.gpu must be 0 or whole GPUs with resources.workers > 1 (NCCL needs a GPU of "
                             f"its own per worker), but got {self.resources.gpu!r}")
        self.train = self.train.model_copy(update={
            "epochs": self.epochs, "retentions": list(self.retentions), "metric": self.metric, "seed": self.seed,
            "threads": max(1, int(self.resources.cpu)), "device": "cuda" if self.resources.gpu > 0 else "cpu"})
        return self

    @property
    def source(self) -> str:
        return self._source

    def advice(self) -> list[str]:
        """Settings that are allowed but probably not meant, each with its consequence (one line each)."""
        sch, every = self.scheduler, self.train.eval_every
        if every > self.epochs:
            return [f"{self.source}: train.eval_every ({every}) > epochs ({self.epochs}): each trial reports, and "
                    f"saves a checkpoint, only at its last epoch; a trial whose worker dies starts again from scratch"]
        if sch.kind == "asha" and every > sch.grace_period:
            return [f"{self.source}: train.eval_every ({every}) > scheduler.grace_period ({sch.grace_period}): ASHA "
                    f"judges a trial at its evaluations, so its first rung waits until epoch {every}; set eval_every "
                    f"<= grace_period for the rung at epoch {sch.grace_period}"]
        return []

    @property
    def spaces(self) -> dict[str, dict[str, Dist]]:
        """{technique: {param: distribution}}: the search space of every technique of the sweep."""
        return self.techniques.dists()

    @property
    def score(self) -> Metric:
        """The sweep's metric (``tuning.trial.metrics.Metric``): its keys, mode and labels."""
        return self.metric.as_metric()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.epochs

    def allocation(self) -> dict[str, int]:
        """Trials per technique: ``samples_per_technique`` where given, the rest of ``num_samples`` split
        evenly over the other techniques (the first ones get one more when it does not divide; with
        fewer trials than techniques the last ones get none, and the sweep says so when it starts)."""
        fixed = dict(self.samples_per_technique)
        rest = [t for t in self.spaces if t not in fixed]
        left = max(0, self.num_samples - sum(fixed.values()))
        share = {t: left // len(rest) + (i < left % len(rest)) for i, t in enumerate(rest)} if rest else {}
        return {t: fixed.get(t, share.get(t)) for t in self.spaces}

    @property
    def total_samples(self) -> int:
        """Trials the Tuner runs: the sum of the allocation (grid: ``num_samples`` repeats of the grid)."""
        return self.num_samples if self.searcher.kind == "grid" else sum(self.allocation().values())

    def objective_metrics(self) -> list[str]:
        """The metrics the searcher optimises, each in the metric's mode (``score.mode``)."""
        if self.searcher.kind == "multi":
            return [self.score.at(p) for p in self.retentions if p < 1]
        return ["objective"]

    def trial_config(self, technique: str, params: dict) -> TrialSpec:
        """The trial of ``technique`` at ``params`` (over the space's fixed values), validated."""
        spaces = self.spaces
        if technique not in spaces:
            raise SpecError(f"{self.source}: technique {technique!r} is not in this sweep; "
                            f"its techniques: {list(spaces)}")
        values = {p: d.value for p, d in spaces[technique].items() if d.kind == "fixed"}
        values.update({k: plain(v) for k, v in params.items()})
        taken = type(getattr(self.techniques, technique)).model_fields
        unknown = sorted(set(values) - set(taken))
        if unknown:
            raise SpecError(f"{self.source}: trial {technique}: technique {technique!r} takes no parameter(s) "
                            f"{unknown}; it takes {list(taken)}")
        raw = {"data": self.data.model_dump(), "model": self.model.model_dump(), "train": self.train.model_dump(),
               "technique": {"name": technique, **values}}
        if self.function is not None:
            raw.update(function=self.function, code_dir=self.code_dir)
        return trial_spec.from_dict(raw, f"{self.source} [{technique}]")

    def to_dict(self) -> dict:
        """A YAML-serialisable dict; ``from_dict(spec.to_dict())`` gives the same spec."""
        d = self.model_dump(exclude={"techniques"} if self.function else {"techniques", "function", "code_dir"})
        d["train"] = {k: v for k, v in d["train"].items() if k not in MANAGED}
        d["techniques"] = {t: {p: dist.to_yaml() for p, dist in space.items()} for t, space in self.spaces.items()}
        return copy.deepcopy(d)


# ---- loading ---------------------------------------------------------------------------------
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
        raise SpecError(f"{source}: a sweep spec must be a mapping, but got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise SpecError(f"{source}: variants must map variant names to partial specs, but got {variants!r}")
    if variant is None:
        return raw
    if variant not in variants:
        raise SpecError(f"{source}: no variant {variant!r}; its variants: {sorted(variants)}")
    return _merge(raw, variants[variant])


def from_dict(d: Any, source: str = "<dict>", variant: Optional[str] = None,
              origins: Optional[dict] = None) -> SweepSpec:
    """A validated ``SweepSpec``; every technique's base trial is checked as a trial spec too."""
    spec = validate(SweepSpec, _with_variant(d, source, variant), source, origins)
    spec._source = source
    for technique, space in spec.spaces.items():        # the low corner of each space is a valid trial
        spec.trial_config(technique, {p: d.first() for p, d in space.items()})
    return spec


def load_spec(path: Union[str, Path], overrides=(), variant: Optional[str] = None) -> SweepSpec:
    """Read a sweep spec from YAML, merge ``variant``, apply ``--set`` overrides, validate."""
    raw = _with_variant(read_yaml(path, "sweep spec"), str(path), variant)
    raw, origins = apply_overrides(raw, overrides)
    return from_dict(resolve_code_dir(trial_spec.with_code_folder(raw, Path(path).parent), Path(path).parent),
                     str(path), origins=origins)


def dump_spec(spec: SweepSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))


def json_schema(kind: str = "sweep") -> str:
    """The JSON Schema of sweep specs (``kind="sweep"``, with ``variants``) or trial specs (``"trial"``)."""
    if kind == "trial":
        return json.dumps(TrialSpec.model_json_schema(), indent=2)
    schema = SweepSpec.model_json_schema()
    schema["properties"]["variants"] = {"type": "object", "additionalProperties": {"type": "object"},
                                        "description": "named partial specs merged over the file (--variant)"}
    return json.dumps(schema, indent=2)

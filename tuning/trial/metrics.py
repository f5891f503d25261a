"""The names of a trial's scores and the dict it reports at each evaluation: their one owner.

A trial scored at retention level p reports ``acc@p`` (validation accuracy after truncation),
``params@p`` (the whole model's parameter count after truncation) and ``targeted@p`` (the fraction
of the targeted matrices' parameters kept); the level is written ``f"{p:g}"`` (0.2 -> "0.2", 1.0 -> "1").
MLflow metric names may not contain ``@``: there ``acc@0.2`` is ``acc_at_0.2`` (``mlflow_key`` and
``metric_key`` convert). A sweep ranks trials by its objective: ``mean`` (of acc@p over the levels
p < 1) or one ``acc@p``.

The metric is the sweep's (``Metric``): accuracy, higher is better, by default, whose values are
``acc`` and ``acc@p``; any other metric is reported under its own name (``val_loss``, ``val_loss@0.2``:
``score_key``) and ranked in its direction (``mode``: max or min). Pure: no torch, Ray or MLflow.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional, Required, TypedDict

ACC, PARAMS, TARGETED = "acc", "params", "targeted"      # the scores at each level (and "acc": the full model)
SCORES = (ACC, PARAMS, TARGETED)
AT, MLFLOW_AT = "@", "_at_"                              # acc@0.2 here, acc_at_0.2 in MLflow
MEAN = "mean"                                            # the objective that averages acc@p over p < 1
DIAG = "diag/"                                           # the Q3R diagnostics (diag/mean/... in a report)
LOGGED = ("epoch", "train_loss", "time_s", "acc", "objective")   # the report's numbers MLflow logs, with the scores

# The status of a trial in its reports (a sweep adds "stopped" and "failed": tuning.analysis.records):
RUNNING, COMPLETED, DIVERGED, COLLAPSED = "running", "completed", "diverged", "collapsed"
Status = Literal["running", "completed", "diverged", "collapsed"]

_LEVEL = re.compile(r"[0-9.eE+-]+")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

ACCURACY, VAL_LOSS = "accuracy", "val_loss"
BUILTIN = {ACCURACY: "max", VAL_LOSS: "min"}   # the metrics the built-in recipe computes, with their direction
RESERVED = tuple(dict.fromkeys((ACC, PARAMS, TARGETED, MEAN, *LOGGED, "status")))   # names a metric may not take
Mode = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    """The metric a sweep ranks by: its ``name`` and ``mode`` (max: higher is better; min: lower).

    Its values are reported under ``key`` (the full model) and ``at(p)`` (after truncation at p):
    ``acc`` and ``acc@0.2`` for accuracy (today's names), ``val_loss`` and ``val_loss@0.2`` for
    ``val_loss``. A bad name or mode is a ValueError naming it.
    """

    name: str = ACCURACY
    mode: Mode = "max"

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) or MLFLOW_AT in self.name:
            raise ValueError(f"name must be letters, digits and _ (starting with a letter, without "
                             f"'{MLFLOW_AT}'), but got {self.name!r}")
        if self.name in RESERVED:
            hint = " (accuracy is named 'accuracy')" if self.name == ACC else ""
            raise ValueError(f"name must not be one of the report's own names {list(RESERVED)}{hint}, "
                             f"but got {self.name!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' (higher is better) or 'min' (lower is better), "
                             f"but got {self.mode!r}")

    @property
    def key(self) -> str:
        """The full model's value: ``acc`` for accuracy, else the name."""
        return ACC if self.name == ACCURACY else self.name

    def at(self, p: float) -> str:
        """The value after truncation at ``p``: ``acc@0.2``, ``val_loss@0.2``."""
        return key(self.key, p)

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is: ``sign * value`` is always higher-is-better."""
        return 1 if self.mode == "max" else -1

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return self.sign * a > self.sign * b

    @property
    def direction(self) -> str:
        return "higher is better" if self.mode == "max" else "lower is better"

    @property
    def label(self) -> str:
        """The name as axes and columns show it: ``accuracy``, ``val_loss (lower is better)``."""
        return self.name if (self.name, self.mode) == (ACCURACY, "max") else f"{self.name} ({self.direction})"

    @property
    def diverged(self) -> float:
        """What a diverged seed counts as: 0 for a max metric (as for accuracy), +inf for a min metric."""
        return 0.0 if self.mode == "max" else math.inf


DEFAULT_METRIC = Metric()


def score_key(metric: Metric, p: Optional[float] = None) -> str:
    """The name a trial reports ``metric`` under: at level ``p`` (``val_loss@0.2``) or, with ``p`` None,
    for the full model (``val_loss``); accuracy keeps ``acc@0.2`` and ``acc``."""
    return metric.key if p is None else metric.at(p)


def builtin_metric(name: str, mode: Optional[str] = None) -> Metric:
    """The metric ``name`` of the built-in recipe (``BUILTIN``), its mode that of the recipe unless given
    (and then it must agree); any other name is a ValueError naming the built-in ones."""
    if name not in BUILTIN:
        raise ValueError(f"name must be one the built-in recipe computes, {list(BUILTIN)} (another metric needs "
                         f"your own training loop to report it), but got {name!r}")
    if mode is not None and mode != BUILTIN[name]:
        raise ValueError(f"mode of {name} is {BUILTIN[name]!r} (the recipe's), but got {mode!r}")
    return Metric(name, BUILTIN[name])


class TrialReport(TypedDict, total=False):
    """What a trial hands to ``report`` after each evaluation (``tuning.trial.recipe.run_trial``); a
    sweep trial adds ``objective`` and hands it to Ray, whose callback logs it in MLflow.

    A scored evaluation (any but a diverged one) also holds ``acc``, ``acc@p``, ``params@p`` and
    ``targeted@p`` for every retention level p, and the mean Q3R diagnostics ``diag/mean/...``.
    """

    epoch: Required[int]          # epochs done
    train_loss: Required[float]   # the mean training loss of the last epoch
    time_s: Required[float]       # seconds since the trial (or its resumption) started
    status: Required[Status]
    acc: float                    # the full model's accuracy (acc@1 when 1 is a level)
    objective: float              # the sweep's objective (tuning.sweep.trainable); 0 for a diverged trial


def level_key(p: float) -> str:
    """The stable name of a retention level: 0.2 -> "0.2", 1.0 -> "1"."""
    return f"{float(p):g}"


def key(score: str, p: float) -> str:
    """``score@p``: ``key("acc", 0.2) == "acc@0.2"``."""
    return f"{score}{AT}{level_key(p)}"


def acc_key(p: float) -> str:
    return key(ACC, p)


def params_key(p: float) -> str:
    return key(PARAMS, p)


def targeted_key(p: float) -> str:
    return key(TARGETED, p)


def split_key(name: str, score: Optional[str] = None) -> tuple[str, Optional[float]]:
    """``("acc", 0.2)`` for ``acc@0.2``; ``(name, None)`` for a name that is not a score at a level.
    ``score``: one more score to recognise besides ``SCORES`` (a metric's key: ``val_loss``)."""
    found, at, level = name.partition(AT)
    if at and (found in SCORES or found == score) and _LEVEL.fullmatch(level):
        try:
            return found, float(level)
        except ValueError:
            pass
    return name, None


def level_of(name: str, score: str = ACC) -> Optional[float]:
    """The level p of a ``score@p`` name (``level_of("acc@0.2") == 0.2``), else None."""
    found, p = split_key(name, score)
    return p if found == score else None


def levels(metrics: Iterable[str], score: str = ACC) -> list[float]:
    """The levels p of the ``score@p`` names among ``metrics`` (a dict's keys), in their order."""
    found = (level_of(name, score) for name in metrics)
    return [p for p in found if p is not None]


def is_level_key(name: str, metric: Metric = DEFAULT_METRIC) -> bool:
    """Whether ``name`` is a score at a level (``acc@p``, ``params@p``, ``targeted@p``, the metric's)."""
    return split_key(name, metric.key)[1] is not None


def logged(name: str, metric: Metric = DEFAULT_METRIC) -> bool:
    """Whether a sweep logs the report entry ``name`` in MLflow (its numbers, scores and diagnostics)."""
    return name in LOGGED or name == metric.key or AT in name or name.startswith(DIAG)


def mlflow_key(name: str) -> str:
    """A report's name as an MLflow metric name: ``acc@0.2`` -> ``acc_at_0.2``."""
    return name.replace(AT, MLFLOW_AT)


def metric_key(name: str) -> str:
    """An MLflow metric name back as the report's: ``acc_at_0.2`` -> ``acc@0.2``."""
    return name.replace(MLFLOW_AT, AT)


def from_mlflow(metrics: Mapping[str, float]) -> dict:
    """A run's MLflow metrics under the report's names, the parameter counts ``params@p`` as ints."""
    out = {}
    for name, value in metrics.items():
        name = metric_key(name)
        out[name] = int(value) if split_key(name)[0] == PARAMS else value
    return out


def objective_key(objective: str, retentions: Iterable[float], metric: Metric = DEFAULT_METRIC) -> str:
    """The objective named as a sweep spec stores it: ``mean``, or ``<metric>@p`` with p one of the
    ``retentions`` (``acc@0.20`` -> ``acc@0.2``, ``val_loss@0.2``); anything else is a ValueError naming it."""
    retentions = list(retentions)
    if objective == MEAN:
        if not any(p < 1 for p in retentions):
            raise ValueError(f"objective: mean needs a retention level < 1, but retentions are {retentions}")
        return objective
    p = level_of(objective, metric.key)
    if p is None or level_key(p) not in {level_key(r) for r in retentions}:
        raise ValueError(f"objective: must be 'mean' or '{metric.key}@p' with p one of the retentions {retentions}, "
                         f"but got {objective!r}")
    return metric.at(p)


def objective_value(metrics: Mapping, objective: str, retentions: Iterable[float],
                    metric: Metric = DEFAULT_METRIC) -> float:
    """The scalar a trial is ranked by (in the metric's direction): the mean of the metric at the levels
    p < 1 present, or its value at one level (``acc@0.2``)."""
    if objective == MEAN:
        values = [metrics[k] for k in (metric.at(p) for p in retentions if p < 1) if k in metrics]
        if not values:
            raise KeyError(f"objective 'mean' needs {metric.key}@p for some retention p < 1 in the metrics; "
                           f"they hold {sorted(metrics)}")
        return float(sum(values) / len(values))
    p = level_of(objective, metric.key)
    if p is None:
        raise ValueError(f"objective must be 'mean' or '{metric.key}@p', but got {objective!r}")
    name = metric.at(p)
    if name not in metrics:
        raise KeyError(f"objective {objective!r} needs {name} in the metrics; they hold {sorted(metrics)}")
    return float(metrics[name])


def objective_text(objective: str, metric: Metric = DEFAULT_METRIC) -> str:
    """The objective in words for labels: ``mean accuracy over p < 1``, ``val_loss@0.2 (lower is better)``."""
    text = f"mean {metric.name} over p < 1" if objective == MEAN else objective
    return text if metric.mode == "max" else f"{text} ({metric.direction})"


def diverged_objective(metric: Metric = DEFAULT_METRIC) -> float:
    """The objective a diverged trial reports: 0 for a max metric (accuracy's worst), NaN for a min metric
    (no number is worse than every loss; ASHA leaves NaN out, and the searcher tells Optuna +inf)."""
    return 0.0 if metric.mode == "max" else math.nan

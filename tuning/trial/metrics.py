"""The names of a trial's scores and the dict it reports at each evaluation: their one owner.

A trial scored at retention level p reports ``acc@p`` (validation accuracy after truncation),
``params@p`` (the whole model's parameter count after truncation) and ``targeted@p`` (the fraction
of the targeted matrices' parameters kept); the level is written ``f"{p:g}"`` (0.2 -> "0.2", 1.0 -> "1").
MLflow metric names may not contain ``@``: there ``acc@0.2`` is ``acc_at_0.2`` (``mlflow_key`` and
``metric_key`` convert). A sweep ranks trials by its objective: ``mean`` (of acc@p over the levels
p < 1) or one ``acc@p``. Pure: no torch, Ray or MLflow.
"""
from __future__ import annotations

import re
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


def split_key(name: str) -> tuple[str, Optional[float]]:
    """``("acc", 0.2)`` for ``acc@0.2``; ``(name, None)`` for a name that is not a score at a level."""
    score, at, level = name.partition(AT)
    if at and score in SCORES and _LEVEL.fullmatch(level):
        try:
            return score, float(level)
        except ValueError:
            pass
    return name, None


def level_of(name: str, score: str = ACC) -> Optional[float]:
    """The level p of a ``score@p`` name (``level_of("acc@0.2") == 0.2``), else None."""
    found, p = split_key(name)
    return p if found == score else None


def levels(metrics: Iterable[str], score: str = ACC) -> list[float]:
    """The levels p of the ``score@p`` names among ``metrics`` (a dict's keys), in their order."""
    found = (level_of(name, score) for name in metrics)
    return [p for p in found if p is not None]


def is_level_key(name: str) -> bool:
    """Whether ``name`` is a score at a level (``acc@p``, ``params@p``, ``targeted@p``)."""
    return split_key(name)[1] is not None


def logged(name: str) -> bool:
    """Whether a sweep logs the report entry ``name`` in MLflow (its numbers, scores and diagnostics)."""
    return name in LOGGED or AT in name or name.startswith(DIAG)


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


def objective_key(objective: str, retentions: Iterable[float]) -> str:
    """The objective named as a sweep spec stores it: ``mean``, or ``acc@p`` with p one of the
    ``retentions`` (``acc@0.20`` -> ``acc@0.2``); anything else is a ValueError naming it."""
    retentions = list(retentions)
    if objective == MEAN:
        if not any(p < 1 for p in retentions):
            raise ValueError(f"objective: mean needs a retention level < 1, but retentions are {retentions}")
        return objective
    p = level_of(objective)
    if p is None or level_key(p) not in {level_key(r) for r in retentions}:
        raise ValueError(f"objective: must be 'mean' or 'acc@p' with p one of the retentions {retentions}, "
                         f"but got {objective!r}")
    return acc_key(p)


def objective_value(metrics: Mapping, objective: str, retentions: Iterable[float]) -> float:
    """The scalar a trial is ranked by: the mean of acc@p over the levels p < 1 present, or one acc@p."""
    if objective == MEAN:
        values = [metrics[k] for k in (acc_key(p) for p in retentions if p < 1) if k in metrics]
        if not values:
            raise KeyError(f"objective 'mean' needs acc@p for some retention p < 1 in the metrics; "
                           f"they hold {sorted(metrics)}")
        return float(sum(values) / len(values))
    p = level_of(objective)
    if p is None:
        raise ValueError(f"objective must be 'mean' or 'acc@p', but got {objective!r}")
    name = acc_key(p)
    if name not in metrics:
        raise KeyError(f"objective {objective!r} needs {name} in the metrics; they hold {sorted(metrics)}")
    return float(metrics[name])

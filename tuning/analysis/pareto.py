"""Pareto fronts of a sweep: fewer parameters against a better metric after truncation.

Compute, never draw: every function here takes ``TrialRecord``s (or ``Point``s) and returns plain
typed values; the CLI prints them with ``format_table`` and the dashboards plot them.

One trial scored at K retention levels gives K points: the sweep's metric at p (``acc@p`` for
accuracy, the default; ``val_loss@p``) against ``params@p`` (whole-model parameter count after
truncating every targeted matrix to rank r(p)). "Better" is the metric's direction (``Metric.mode``):
higher accuracy, lower loss; every function takes the ``metric`` and defaults to accuracy.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from tuning.analysis.records import (COLLAPSED, COMPLETED, CONFIRMATION, DIVERGED, SEARCH, STATUSES, TrialRecord)
from tuning.trial.metrics import DEFAULT_METRIC, Metric, levels, params_key, targeted_key

SEED_STATUSES = (COMPLETED, COLLAPSED, DIVERGED)   # confirmation runs that count, at their last scores


class Point(NamedTuple):
    """One trial truncated at one retention level."""

    trial_id: str
    technique: str
    params: dict          # the searched hyperparameters of the trial
    retention: float      # p
    parameters: int       # params@p: whole-model parameter count after truncation
    targeted: float       # targeted@p: fraction of the targeted matrices' parameters kept
    accuracy: float       # the metric at p (acc@p: validation accuracy) after truncation (the mean over seeds)
    run_id: str
    std: float = math.nan  # the standard deviation of the metric at p over seeds (NaN for one seed)
    seeds: int = 1         # runs behind ``accuracy``: the trial and its completed confirmation runs


def _statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ValueError(f"statuses must be drawn from {STATUSES}, but got {statuses=}")
    return statuses


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def points(records: Iterable[TrialRecord], statuses: Iterable[str] = (COMPLETED,),
           metric: Metric = DEFAULT_METRIC) -> list[Point]:
    """One point per (search trial, retention level) of the trials whose status is in ``statuses``.

    Levels without a finite metric or parameter count are left out; ``targeted`` is NaN where
    the trial did not report ``targeted@p``.
    """
    statuses = _statuses(statuses)
    out = []
    for rec in records:
        if rec.status not in statuses or rec.role != SEARCH:      # confirmation runs: see recommend.seed_points
            continue
        scored = []
        for retention in levels(rec.metrics, metric.key):
            acc, params = rec.metrics.get(metric.at(retention)), rec.metrics.get(params_key(retention))
            if _finite(acc) and _finite(params):
                targeted = rec.metrics.get(targeted_key(retention))
                targeted = float(targeted) if _finite(targeted) else math.nan
                scored.append(Point(rec.trial_id, rec.technique, rec.params, retention,
                                    int(round(float(params))), targeted, float(acc), rec.run_id))
        out.extend(sorted(scored, key=lambda p: p.retention))
    return out


def seed_points(records: Iterable[TrialRecord], statuses=(COMPLETED,), metric: Metric = DEFAULT_METRIC) -> list[Point]:
    """``points`` of the search trials, each with the mean, standard deviation and number of seeds of
    the metric at p over the trial and its confirmation runs (a diverged seed, or one without the
    level, counts as ``metric.diverged``: accuracy 0, a min metric +inf)."""
    records = list(records)
    seeds: dict[str, list[TrialRecord]] = {}
    for r in records:
        if r.role == CONFIRMATION and r.status in SEED_STATUSES:
            seeds.setdefault(r.confirms, []).append(r)
    out = []
    for p in points(records, statuses, metric):
        level = metric.at(p.retention)
        accs = [p.accuracy] + [metric.diverged if r.status == DIVERGED else float(r.metrics.get(level, metric.diverged))
                               for r in seeds.get(p.trial_id, [])]
        std = statistics.stdev(accs) if len(accs) > 1 and all(map(math.isfinite, accs)) else math.nan
        out.append(p._replace(accuracy=statistics.fmean(accs), std=std, seeds=len(accs)))
    return out


def dominates(a: Point, b: Point, metric: Metric = DEFAULT_METRIC) -> bool:
    """``a`` has no more parameters and no worse metric than ``b``, and is strictly better in one."""
    s = metric.sign
    return (a.parameters <= b.parameters and s * a.accuracy >= s * b.accuracy
            and (a.parameters < b.parameters or s * a.accuracy > s * b.accuracy))


def pareto_front(pts: Iterable[Point], metric: Metric = DEFAULT_METRIC) -> list[Point]:
    """The non-dominated points, by parameters ascending (so the metric strictly improving too).

    Of points with identical parameters and metric one is kept: the lowest trial_id, then the
    lowest retention. An O(n log n) sort and one sweep.
    """
    s = metric.sign
    front: list[Point] = []
    best = -math.inf                                   # of s * metric: higher is better
    for p in sorted((p for p in pts if _finite(p.accuracy)),
                    key=lambda p: (p.parameters, -s * p.accuracy, p.trial_id, p.retention)):
        if s * p.accuracy > best:
            front.append(p)
            best = s * p.accuracy
    return front


def hypervolume(front: Iterable[Point], ref_parameters: float, ref_accuracy: float = 0.0,
                metric: Metric = DEFAULT_METRIC) -> float:
    """The area dominated by ``front`` and bounded by (ref_parameters, ref_accuracy), the metric's
    reference value (``ref_accuracy``: its worst, 0 for accuracy).

    Parameters are divided by ``ref_parameters``, so for accuracies in [0, 1] and ref_accuracy 0
    the value lies in [0, 1]; for another metric it is in the metric's units. Points with more
    parameters than the reference or a worse metric contribute nothing; ``front`` need not be
    non-dominated.
    """
    if not _finite(ref_parameters) or ref_parameters <= 0:
        raise ValueError(f"ref_parameters must be a positive number, but got {ref_parameters=}")
    if not _finite(ref_accuracy):
        raise ValueError(f"ref_accuracy must be a finite number, but got {ref_accuracy=}")
    s = metric.sign
    inside = pareto_front((p for p in front if p.parameters <= ref_parameters
                           and s * p.accuracy >= s * ref_accuracy), metric)
    area = 0.0
    for p, nxt in zip(inside, inside[1:] + [None]):
        right = 1.0 if nxt is None else nxt.parameters / ref_parameters
        area += (right - p.parameters / ref_parameters) * s * (p.accuracy - ref_accuracy)
    return area


def reference_value(pts: Iterable[Point], metric: Metric = DEFAULT_METRIC) -> float:
    """The hypervolume's reference for the metric: 0 for accuracy (its worst), else the worst value
    among ``pts`` (the highest loss of a min metric; 0.0 when there are none)."""
    if metric == DEFAULT_METRIC:
        return 0.0
    values = [p.accuracy for p in pts if _finite(p.accuracy)]
    if not values:
        return 0.0
    return min(values) if metric.mode == "max" else max(values)


@dataclass(frozen=True)
class ParetoResult:
    overall: list[Point]
    per_technique: dict[str, list[Point]]
    hypervolume: float
    per_technique_hypervolume: dict[str, float]
    ref_parameters: int
    all_points: list[Point]
    confirmed: list[Point] = ()          # seed_points confirmed over several seeds (mean, std, seeds)
    metric: Metric = DEFAULT_METRIC      # what ``Point.accuracy`` holds, and its direction
    ref_value: float = 0.0               # the hypervolume's reference value of the metric (reference_value)


def fronts(records: Iterable[TrialRecord], statuses: Iterable[str] = (COMPLETED,),
           metric: Metric = DEFAULT_METRIC) -> ParetoResult:
    """The overall front and one per technique, with hypervolumes against one reference: the
    largest parameter count among the points (the dense model) and the metric's ``reference_value``
    (accuracy 0; the worst observed value of another metric)."""
    records = list(records)
    pts = points(records, statuses, metric)
    ref = max((p.parameters for p in pts), default=0)
    ref_value = reference_value(pts, metric)
    per_technique = {t: pareto_front((p for p in pts if p.technique == t), metric)
                     for t in sorted({p.technique for p in pts})}
    overall = pareto_front(pts, metric)

    def hv(front):
        return hypervolume(front, ref, ref_value, metric) if ref > 0 else 0.0

    return ParetoResult(overall=overall, per_technique=per_technique, hypervolume=hv(overall),
                        per_technique_hypervolume={t: hv(f) for t, f in per_technique.items()},
                        ref_parameters=ref, all_points=pts,
                        confirmed=[p for p in seed_points(records, statuses, metric) if p.seeds > 1],
                        metric=metric, ref_value=ref_value)


def format_params(params: dict) -> str:
    """{"lr": 1e-3, "lmbda": 0.5} -> "lmbda=0.5 lr=0.001" (keys sorted)."""
    def value(v):
        return f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k}={value(v)}" for k, v in sorted(params.items()))


def front_table(front: Iterable[Point], metric: Metric = DEFAULT_METRIC) -> list[dict]:
    """Rows for printing or logging, one per point, in the given order; the metric's column is its name."""
    return [{"technique": p.technique, "hyperparameters": format_params(p.params), "retention": p.retention,
             "parameters": p.parameters, metric.name: p.accuracy, "trial_id": p.trial_id} for p in front]


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[dict]) -> str:
    """A plain aligned text table: numbers right-aligned, text left-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool) for row in rows)
               for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])

"""Recommend a configuration for a parameter budget, and write it as a runnable trial spec.

A budget is a fraction of the targeted matrices' parameters (0.2: keep 20%, compared with
``targeted@p``) or an absolute whole-model parameter count (50000, compared with ``params@p``).
The recommendation is the best (configuration, retention level) within the budget by the sweep's
metric (highest accuracy by default; lowest loss for a min metric), by its mean over seeds: once a
sweep has confirmation runs (``tuning.analysis.confirm``), only configurations confirmed over several
seeds are recommended, and a single lucky run is not.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

from tuning.analysis.pareto import Point, format_params, seed_points
from tuning.analysis.records import COMPLETED, TrialRecord
from tuning.trial.metrics import DEFAULT_METRIC, Metric

Budget = Union[float, int]
# The budgets of a sweep, fractions of the targeted parameters: the sweep confirms the best configurations
# of each (tuning.analysis.confirm), publishes their recommendations and models, and its report shows them.
BUDGETS = (0.05, 0.1, 0.2, 0.4)
TOLERANCE = 1e-9          # fraction budgets: targeted <= budget + TOLERANCE


def parse_budget(text: str) -> Budget:
    """"0.2" -> 0.2 (a fraction in (0, 1] of the targeted parameters); "50000" or "5e4" -> 50000
    (a whole-model parameter count, an int > 1). Anything else is a ValueError naming the value."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"a budget is a fraction in (0, 1] or a parameter count > 1, but got {text=}") from None
    return _check(value, f"{text=}")


def _check(value: float, shown: str) -> Budget:
    if value != value or value in (float("inf"), float("-inf")) or value <= 0:
        raise ValueError(f"a budget must be a finite positive number, but got {shown}")
    if value <= 1:
        return float(value)
    if value != int(value):
        raise ValueError(f"a budget above 1 is a whole parameter count, but got {shown}")
    return int(value)


def _budget(budget) -> Budget:
    """A budget given as text (parse_budget) or as a number (the same rules)."""
    if isinstance(budget, str):
        return parse_budget(budget)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"a budget is a fraction in (0, 1] or a parameter count > 1, but got {budget=}")
    return _check(float(budget), f"{budget=}")


def is_fraction(budget: Budget) -> bool:
    return isinstance(budget, float)


def within(point: Point, budget: Budget) -> bool:
    if is_fraction(budget):
        return point.targeted <= budget + TOLERANCE     # NaN (not reported) is never within
    return point.parameters <= budget


def ranking(metric: Metric = DEFAULT_METRIC):
    """The sort key of points, best first: the better metric, then fewer parameters, trial_id, retention."""
    def key(p: Point):
        return (-metric.sign * p.accuracy, p.parameters, p.trial_id, p.retention)
    return key


def _candidates(pts: list[Point], budget: Budget, statuses) -> list[Point]:
    """The points within ``budget``; a ValueError if there are none."""
    if not pts:
        raise ValueError(f"no trial with status in {tuple(statuses)} has been scored, so nothing fits {budget=}")
    inside = [p for p in pts if within(p, budget)]
    if not inside:
        if is_fraction(budget):
            smallest = min((p.targeted for p in pts if p.targeted == p.targeted), default=float("nan"))
            reach = f"a fraction of {smallest:g} of the targeted parameters"
        else:
            reach = f"{min(p.parameters for p in pts):,} parameters"
        raise ValueError(f"no trial fits {budget=}: the smallest budget any trial reached is {reach}")
    return inside


def _eligible(pts: list[Point], budget) -> list[Point]:
    """Within the budget; only confirmed points (several seeds, a finite mean: no seed of a min metric
    diverged) where any confirmed point fits."""
    inside = [p for p in pts if within(p, budget)]
    confirmed = [p for p in inside if p.seeds > 1 and math.isfinite(p.accuracy)]
    return confirmed or inside


@dataclass(frozen=True)
class Recommendation:
    budget: Budget
    point: Point
    record: TrialRecord
    alternatives: list[Point] = field(default_factory=list)   # the best point of each other technique
    metric: Metric = DEFAULT_METRIC                            # what the points' ``accuracy`` holds


def accuracy_text(accuracy: float, std: float, seeds: int) -> str:
    """"0.9306 +- 0.0120 (3 seeds)", or "0.9306 (1 seed)" for a single run."""
    spread = f" +- {std:.4f}" if seeds > 1 else ""
    return f"{accuracy:.4f}{spread} ({seeds} seed{'s' if seeds != 1 else ''})"


def recommend(records: Iterable[TrialRecord], budget, statuses: Iterable[str] = (COMPLETED,),
              *, n_alternatives: int = 4, metric: Metric = DEFAULT_METRIC) -> Recommendation:
    """The point within ``budget`` best by ``metric`` (ties: fewer parameters, then trial_id)."""
    budget = _budget(budget)
    records = list(records)
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    pts = seed_points(records, statuses, metric)
    _candidates(pts, budget, statuses)                          # a clear error when nothing fits
    inside = sorted(_eligible(pts, budget), key=ranking(metric))
    best = inside[0]
    record = next(r for r in records if r.trial_id == best.trial_id and r.status in statuses)
    seen, alternatives = {best.technique}, []
    for p in inside[1:]:
        if p.technique not in seen and len(alternatives) < n_alternatives:
            seen.add(p.technique)
            alternatives.append(p)
    return Recommendation(budget=budget, point=best, record=record, alternatives=alternatives, metric=metric)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recommended_config(rec: Recommendation) -> dict:
    """The source trial's spec with ``train.retentions`` including the recommended level and 1.0."""
    from tuning.trial.spec import from_dict

    if not rec.record.config:
        raise ValueError(f"trial {rec.record.trial_id!r} carries no config to recommend")
    config = _plain(copy.deepcopy(rec.record.config))
    train = config["train"] = dict(config.get("train") or {})
    levels = train.get("retentions") or rec.record.retentions()
    merged = {f"{float(p):g}": float(p) for p in [*levels, rec.point.retention, 1.0]}
    train["retentions"] = sorted(merged.values())
    from_dict(config, f"recommended config of trial {rec.record.trial_id!r}")
    return config


def write_spec(rec: Recommendation, path: Union[str, Path]) -> Path:
    """Write ``recommended_config(rec)`` as a YAML trial spec with a header that says why."""
    import yaml

    config, p, path = recommended_config(rec), rec.point, Path(path)
    budget = (f"{rec.budget:g} of the targeted parameters" if is_fraction(rec.budget)
              else f"{rec.budget:,} parameters (whole model)")
    hyper = format_params(p.params)
    header = [
        f"# q3r-tune recommendation for a budget of {budget}",
        f"# technique: {p.technique}" + (f" ({hyper})" if hyper else ""),
        f"# expected {rec.metric.name}: {accuracy_text(p.accuracy, p.std, p.seeds)} after truncation at retention"
        f" {p.retention:g}"
        f" ({p.parameters:,} parameters, {p.targeted:.1%} of the targeted parameters)",
        f"# source trial: {p.trial_id}" + (f" (MLflow run {p.run_id})" if p.run_id else ""),
        f"# run: q3r-tune train {path}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def recommendation_table(records: Iterable[TrialRecord], budgets: Iterable,
                         statuses: Iterable[str] = (COMPLETED,), metric: Metric = DEFAULT_METRIC) -> list[dict]:
    """The best point for each budget, skipping budgets that no trial reaches; the metric's column is
    its name (``accuracy``)."""
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    pts = seed_points(records, statuses, metric)
    rows = []
    for raw in budgets:
        budget = _budget(raw)
        inside = _eligible(pts, budget)
        if not inside:
            continue
        p = min(inside, key=ranking(metric))
        rows.append({"budget": budget, "technique": p.technique, "hyperparameters": format_params(p.params),
                     "retention": p.retention, "parameters": p.parameters, metric.name: p.accuracy,
                     "std": p.std if p.seeds > 1 else None, "seeds": p.seeds, "trial_id": p.trial_id})
    return rows

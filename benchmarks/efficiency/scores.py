"""What a replay found, scored against the full grid: hypervolume ratio, regret, rung fidelity, noise floor.

Pure functions of ``TrialRecord``s and table ``Run``s (no Ray), built on ``tuning.analysis.pareto`` and
``tuning.analysis.recommend``, so that the benchmark scores a strategy with the product's own front and
recommendation.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence

from tuning.analysis.pareto import hypervolume, points
from tuning.analysis.records import COMPLETED, SEARCH, TrialRecord
from tuning.analysis.recommend import recommend
from tuning.trial.metrics import ACC, acc_key, is_level_key

from .table import Run


def scored_metrics(row: dict) -> dict:
    """The scores of a reported row that a trial's record keeps (accuracies, parameter counts, objective)."""
    return {k: v for k, v in row.items() if isinstance(k, str) and (k in (ACC, "objective") or is_level_key(k))}


def final_record(run: Run) -> TrialRecord:
    """The table run as the sweep would have recorded it at its end."""
    last = run.rows[-1]
    metrics = scored_metrics(last)
    return TrialRecord(trial_id=run.trial_id, technique=run.technique, params=run.params, status=run.status,
                       epoch=int(last["epoch"]), metrics=metrics)


def grid_records(runs: Iterable[Run]) -> list[TrialRecord]:
    return [final_record(r) for r in runs if r.role == SEARCH]


def reference_parameters(records: Iterable[TrialRecord]) -> int:
    """The hypervolume's parameter reference: the largest parameter count of any point (the dense model)."""
    return max((p.parameters for p in points(records)), default=0)


def hv(records: Iterable[TrialRecord], ref: float) -> float:
    return hypervolume(points(records, (COMPLETED,)), ref)


def hv_ratio(found: Iterable[TrialRecord], grid: Sequence[TrialRecord]) -> float:
    """Hypervolume of the completed found trials' front / the grid's, against the grid's reference."""
    ref = reference_parameters(grid)
    whole = hv(grid, ref)
    if whole <= 0:
        raise ValueError("the grid's front has no hypervolume: no grid trial completed with a finite accuracy")
    return hv(found, ref) / whole


def regret(found: Iterable[TrialRecord], grid: Sequence[TrialRecord], budget: float) -> float:
    """Accuracy of the grid's best point within ``budget`` minus that of the point recommended from ``found``
    (the recommended configuration's table accuracy); the whole best accuracy when nothing is recommended."""
    best = recommend(grid, budget).point.accuracy
    try:
        return best - recommend(list(found), budget).point.accuracy
    except ValueError:                  # nothing found fits the budget: nothing is recommended
        return best


def found_by(finished, spend: float) -> list[TrialRecord]:
    """The records of the trials that had ended when ``spend`` epochs had been spent in all."""
    return [f.record for f in finished if f.spend <= spend]


def total_spend(finished) -> int:
    return max((f.spend for f in finished), default=0)


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks); NaN when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, but got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def objective_at(run: Run, epoch: int) -> float:
    """The objective the run reported at ``epoch``; 0 (the diverged score) when it had stopped before."""
    for row in run.rows:
        if row["epoch"] == epoch:
            return float(row.get("objective", 0.0)) if row.get("objective") == row.get("objective") else 0.0
    return 0.0


def rung_fidelity(runs: Iterable[Run], epochs: Sequence[int], last: int) -> dict[str, dict[int, float]]:
    """{technique: {epoch: Spearman of the objective at epoch vs at ``last``}} over the grid's runs."""
    out: dict[str, dict[int, float]] = {}
    grid = [r for r in runs if r.role == SEARCH]
    for technique in dict.fromkeys(r.technique for r in grid):
        mine = [r for r in grid if r.technique == technique]
        final = [objective_at(r, last) for r in mine]
        out[technique] = {e: (spearman([objective_at(r, e) for r in mine], final) if len(mine) > 1 else math.nan)
                          for e in epochs}
    return out


def noise_floor(runs: Iterable[Run], levels: Sequence[float]) -> list[dict]:
    """Per configuration trained with two seeds: |acc@p difference| at every level p < 1, at the last epoch."""
    runs = list(runs)
    by_id = {r.trial_id: r for r in runs}
    rows = []
    for second in (r for r in runs if r.role != SEARCH and r.confirms in by_id):
        first = by_id[second.confirms]
        a, b = first.rows[-1], second.rows[-1]
        diffs = [abs(float(a.get(acc_key(p), 0.0)) - float(b.get(acc_key(p), 0.0))) for p in levels if p < 1]
        rows.append({"technique": first.technique, "trial_id": first.trial_id, "seeds": f"{first.seed},{second.seed}",
                     "mean |diff|": statistics.fmean(diffs), "max |diff|": max(diffs)})
    return rows

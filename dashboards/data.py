"""The data behind each figure of a sweep report: pure functions of ``TrialRecord``s.

Compute, never draw: ``dashboards.figures`` (plotly) and ``dashboards.static`` (matplotlib) plot
what these functions return and decide nothing themselves. The Pareto front and the
recommendation table come from ``tuning.pareto.fronts`` and ``tuning.recommend.recommendation_table``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, NamedTuple, Optional, Sequence

from tuning.analysis.pareto import ParetoResult, fronts
from tuning.analysis.recommend import BUDGETS, recommendation_table
from tuning.analysis.records import COMPLETED, SEARCH, STATUSES, STOPPED, TrialRecord
from tuning.trial.metrics import DEFAULT_METRIC, Metric, levels

SENSITIVITY_PARAMS = ("lmbda", "target_rank", "period", "lr")
LOG_PARAMS = frozenset({"lmbda", "lr"})           # drawn on a log axis
BASELINE = "adamw"                                 # the unregularized model of the reference line


def finite(value) -> bool:
    """A real number that is not NaN or infinite (bools are not numbers here)."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def search_trials(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The trials of the search (confirmation runs left out: they are seeds of a search trial)."""
    return [r for r in records if r.role == SEARCH]


def objective(record: TrialRecord) -> Optional[float]:
    """The trial's last reported objective, or None if it has none (yet)."""
    value = record.metrics.get("objective")
    return float(value) if finite(value) else None


def full_accuracy(record: TrialRecord, metric: Metric = DEFAULT_METRIC) -> Optional[float]:
    """The metric of the untruncated model: ``acc``, else ``acc@1`` (a metric's key, else at 1); None if
    neither is a number."""
    for key in (metric.key, metric.at(1)):
        if finite(record.metrics.get(key)):
            return float(record.metrics[key])
    return None


# --- summary ---------------------------------------------------------------------------------------

class Summary(NamedTuple):
    trials: int
    by_status: dict          # status -> count, in the order of tuning.analysis.records.STATUSES (others last)
    techniques: tuple        # sorted
    completed: int

    @property
    def finished(self) -> bool:
        """At least one trial ran its full budget (so fronts and recommendations exist)."""
        return self.completed > 0


def summary(records: Iterable[TrialRecord]) -> Summary:
    records = list(records)
    counts = Counter(r.status for r in records)
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts if s not in STATUSES)
    return Summary(trials=len(records), by_status={s: counts[s] for s in order},
                   techniques=tuple(sorted({r.technique for r in records})), completed=counts[COMPLETED])


# --- 1. the Pareto front ---------------------------------------------------------------------------

def pareto(records: Iterable[TrialRecord], metric: Metric = DEFAULT_METRIC) -> ParetoResult:
    """Every (trial, retention) point of the completed trials, the overall and per-technique fronts."""
    return fronts(records, metric=metric)


# --- 2. accuracy against retention of each technique's best configuration ---------------------------

class RetentionCurve(NamedTuple):
    technique: str
    trial_id: str
    params: dict
    objective: float
    retentions: tuple        # ascending
    accuracies: tuple        # the metric at each retention (acc@p)


class RetentionData(NamedTuple):
    curves: list             # one RetentionCurve per technique, sorted by technique
    reference: Optional[float]   # the best full-model metric of a completed adamw trial (None: no such trial)
    reference_trial: Optional[str]
    metric: Metric = DEFAULT_METRIC


def _levels(record: TrialRecord, metric: Metric = DEFAULT_METRIC) -> list[tuple[float, float]]:
    """(p, the metric at p) of every level with a finite value, ascending."""
    accs = ((p, record.metrics.get(metric.at(p))) for p in levels(record.metrics, metric.key))
    return sorted((p, float(a)) for p, a in accs if finite(a))


def best_trials(records: Iterable[TrialRecord], metric: Metric = DEFAULT_METRIC) -> dict[str, TrialRecord]:
    """technique -> its completed trial with the best objective in the metric's direction (ties: the
    lowest trial id)."""
    best: dict[str, TrialRecord] = {}
    for r in sorted(records, key=lambda r: r.trial_id):
        value = objective(r)
        if r.status != COMPLETED or value is None:
            continue
        if r.technique not in best or metric.better(value, objective(best[r.technique])):
            best[r.technique] = r
    return dict(sorted(best.items()))


def retention_curves(records: Iterable[TrialRecord], baseline: str = BASELINE,
                     metric: Metric = DEFAULT_METRIC) -> RetentionData:
    records = list(records)
    curves = []
    for tech, r in best_trials(records, metric).items():
        levels = _levels(r, metric)
        curves.append(RetentionCurve(tech, r.trial_id, r.params, objective(r),
                                     tuple(p for p, _ in levels), tuple(a for _, a in levels)))
    reference, ref_trial = None, None
    for r in sorted(records, key=lambda r: r.trial_id):
        acc = full_accuracy(r, metric) if r.status == COMPLETED and r.technique == baseline else None
        if acc is not None and (reference is None or metric.better(acc, reference)):
            reference, ref_trial = acc, r.trial_id
    return RetentionData(curves, reference, ref_trial, metric)


# --- 3. sensitivity of the objective to each hyperparameter ----------------------------------------

class SensitivityPoint(NamedTuple):
    value: float
    objective: float
    technique: str
    status: str
    trial_id: str


class Sensitivity(NamedTuple):
    param: str
    log_x: bool
    points: list             # SensitivityPoints, by trial id


def sensitivity(records: Iterable[TrialRecord], params: Sequence[str] = SENSITIVITY_PARAMS) -> list[Sensitivity]:
    """For each of ``params`` that some trial searched: (value, objective) of every trial with an
    objective, whatever its status. Non-positive values are left out of the log-scale panels."""
    records = sorted(records, key=lambda r: r.trial_id)
    out = []
    for name in params:
        if not any(name in r.params for r in records):
            continue
        log_x = name in LOG_PARAMS
        pts = []
        for r in records:
            value, obj = r.params.get(name), objective(r)
            if obj is None or not finite(value) or (log_x and float(value) <= 0):
                continue
            pts.append(SensitivityPoint(float(value), obj, r.technique, r.status, r.trial_id))
        out.append(Sensitivity(name, log_x, pts))
    return out


# --- 4. ASHA progress -------------------------------------------------------------------------------

class Progress(NamedTuple):
    trial_id: str
    technique: str
    status: str
    epochs: tuple
    objectives: tuple

    @property
    def stopped(self) -> bool:
        """Stopped early by the scheduler."""
        return self.status == STOPPED


def progress(records: Iterable[TrialRecord]) -> list[Progress]:
    """The objective at every evaluation of every trial that reported one, by trial id; works on
    running sweeps (their trials simply have shorter histories)."""
    out = []
    for r in sorted(records, key=lambda r: r.trial_id):
        pts = sorted((int(h["epoch"]), float(h["objective"])) for h in r.history
                     if finite(h.get("epoch")) and finite(h.get("objective")))
        if pts:
            out.append(Progress(r.trial_id, r.technique, r.status, tuple(e for e, _ in pts),
                                tuple(o for _, o in pts)))
    return out


# --- 5. recommendations -----------------------------------------------------------------------------

def recommendations(records: Iterable[TrialRecord], budgets: Iterable = BUDGETS,
                    metric: Metric = DEFAULT_METRIC) -> list[dict]:
    """The best completed (trial, retention) by the metric within each budget (by default the sweep's, which it
    confirmed); budgets nobody reaches are left out."""
    return recommendation_table(records, budgets, metric=metric)

"""Confirmation over seeds: the best configurations at each budget, trained again with new seeds.

A search trial is one seed; on small data the accuracy after truncation swings by several points
with the seed. After the search, for every budget of the recommendation table, the ``top`` best
distinct configurations within that budget are trained again, to the full epochs, with ``seeds``
new seeds (``seed + 1``, ``seed + 2``, ...), as Ray trials of the same sweep whose MLflow child runs
carry ``q3r.role = confirmation`` and ``q3r.confirms = <trial id>``. A configuration picked by
several budgets is run once. ``tuning.analysis.recommend`` then ranks by the mean over all seeds.

``plan`` is pure (records in, grid points out); ``tuning.sweep.driver.Sweep.confirm`` runs it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from tuning.analysis.pareto import points
from tuning.analysis.recommend import _budget, ranking, within
from tuning.analysis.records import COMPLETED, CONFIRMATION, TrialRecord
from tuning.trial.metrics import DEFAULT_METRIC, Metric


def _key(record: TrialRecord) -> tuple:
    return record.technique, tuple(sorted(record.params.items()))


def candidates(records: Iterable[TrialRecord], budgets: Sequence, top: int,
               metric: Metric = DEFAULT_METRIC) -> list[TrialRecord]:
    """The ``top`` best distinct completed configurations within each budget (by ``metric``), each once,
    in budget order."""
    records = [r for r in records if r.role != CONFIRMATION]
    by_id = {r.trial_id: r for r in records}
    pts = points(records, (COMPLETED,), metric)
    chosen: dict[tuple, TrialRecord] = {}
    for raw in budgets:
        budget, picked = _budget(raw), set()
        for p in sorted((p for p in pts if within(p, budget)), key=ranking(metric)):
            key = _key(by_id[p.trial_id])
            if len(picked) == top:
                break
            if key not in picked:
                picked.add(key)
                chosen.setdefault(key, by_id[p.trial_id])
    return list(chosen.values())


def plan(records: Iterable[TrialRecord], budgets: Sequence, top: int, seeds: int, base_seed: int,
         metric: Metric = DEFAULT_METRIC) -> list[dict]:
    """Grid points ``{"technique", "<technique>.<param>"..., "seed", "confirms"}`` of the confirmation."""
    if top <= 0 or seeds <= 0:
        return []
    out = []
    for record in candidates(records, budgets, top, metric):
        params = {f"{record.technique}.{k}": v for k, v in sorted(record.params.items())}
        for k in range(1, seeds + 1):
            out.append({"technique": record.technique, **params, "seed": base_seed + k, "confirms": record.trial_id})
    return out

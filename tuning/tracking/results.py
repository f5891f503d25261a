"""Read a sweep back from MLflow as ``TrialRecord``s (finished or still running).

Everything that looks at a sweep after the fact (``pareto``, ``recommend``, ``report``, the
dashboards) starts here, from the tracking store alone: no Ray, no files of the driver.
"""
from __future__ import annotations

import json
from typing import Optional

from mlflow.tracking import MlflowClient

from tuning.analysis.records import TrialRecord
from tuning.analysis.records import SEARCH
from tuning.tracking.store import CONFIG, CONFIRMS, PARAMS, PARENT, ROLE, STATUS, TECHNIQUE, TRIAL_ID, find_sweep
from tuning.trial.metrics import DEFAULT_METRIC, Metric, from_mlflow

HISTORY_KEYS = ("epoch", "objective", "train_loss")   # per-evaluation series kept in ``history``, with the metric's


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    exp_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def record_of(client: MlflowClient, run, with_history: bool = True, metric: Metric = DEFAULT_METRIC) -> TrialRecord:
    tags, data = run.data.tags, run.data
    metrics = from_mlflow(data.metrics)
    history: list = []
    if with_history:
        keys = (*HISTORY_KEYS, metric.key)
        series = {k: client.get_metric_history(run.info.run_id, k) for k in keys if k in data.metrics}
        steps: dict = {}
        for key, points in series.items():
            for m in points:
                steps.setdefault(int(m.step), {})[key] = m.value
        history = [dict(v, epoch=s) for s, v in sorted(steps.items())]
    config = json.loads(tags.get(CONFIG, "{}"))
    return TrialRecord(trial_id=tags.get(TRIAL_ID, run.info.run_id), technique=tags.get(TECHNIQUE, "?"),
                       params=json.loads(tags.get(PARAMS, "{}")), status=tags.get(STATUS, "running"),
                       epoch=int(metrics.get("epoch", 0)), metrics=metrics, history=tuple(history),
                       config=config, run_id=run.info.run_id, role=tags.get(ROLE, SEARCH),
                       confirms=tags.get(CONFIRMS, ""), seed=(config.get("train") or {}).get("seed"))


def load_records(client: MlflowClient, parent_run_id: str, with_history: bool = True,
                 metric: Metric = DEFAULT_METRIC) -> list[TrialRecord]:
    """Every trial of the sweep whose parent run is ``parent_run_id``, ordered by trial id."""
    records = [record_of(client, r, with_history, metric) for r in child_runs(client, parent_run_id)]
    return sorted(records, key=lambda r: r.trial_id)


def load_sweep(tracking_uri: str, name: str, with_history: bool = True) -> tuple[object, list[TrialRecord]]:
    """(parent run, trial records) of the latest sweep in the experiment ``name``; ``sweep_metric(parent)``
    is its metric."""
    from tuning.tracking.store import check_tracking

    client = check_tracking(tracking_uri, looking_for=f"sweep named {name!r}")
    parent = find_sweep(client, name)
    return parent, load_records(client, parent.info.run_id, with_history, sweep_metric(parent))


def run_metric(client: MlflowClient, run) -> Metric:
    """The metric of a run: its sweep's (the parent run's) for a sweep trial, else its trial spec's
    (``train.metric`` in ``q3r.config``; accuracy for a run from before there was one)."""
    parent = run.data.tags.get(PARENT)
    if parent:
        return sweep_metric(client.get_run(parent))
    metric = (json.loads(run.data.tags.get(CONFIG, "{}")).get("train") or {}).get("metric")
    return Metric(metric["name"], metric["mode"]) if metric else DEFAULT_METRIC


def sweep_metric(parent) -> Metric:
    """The metric of a sweep, from its parent run's ``metric.name`` and ``metric.mode`` parameters
    (a sweep that has none, from before sweeps had a metric: accuracy)."""
    params = parent.data.params
    if "metric.name" not in params:
        return DEFAULT_METRIC
    return Metric(params["metric.name"], params.get("metric.mode", "max"))


def sweep_techniques(parent) -> list[str]:
    """The techniques a sweep searched, from its parent run's ``techniques`` parameter."""
    value = parent.data.params.get("techniques", "")
    return [t for t in value.split(",") if t]


def results_table(records: list[TrialRecord], retentions: Optional[list] = None,
                  metric: Metric = DEFAULT_METRIC) -> list[dict]:
    """One flat row per trial: id, technique, status, epoch, hyperparameters, objective, the metric at
    every level (acc@p)."""
    rows = []
    for r in records:
        row = {"trial_id": r.trial_id, "technique": r.technique, "status": r.status, "epoch": r.epoch}
        row.update(r.params)
        row["objective"] = r.metrics.get("objective")
        for p in retentions or r.retentions():
            row[metric.at(p)] = r.metrics.get(metric.at(p))
        rows.append(row)
    return rows

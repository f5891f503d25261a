"""Trial runs in MLflow, idempotently: the spooled operations of a sweep (``RunMirror``) and one
``q3r-tune train`` run (``TrainRun``). Imports MLflow, never Ray."""
from __future__ import annotations

import json
import time
from typing import Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tuning.analysis.records import COMPLETED, FAILED, STOPPED
from tuning.spec.space import flat_config
from tuning.tracking.spool import Spool
from tuning.tracking.store import (CHECKPOINT, CONFIG, ERROR, PARENT, ROLE, STATUS, TECHNIQUE, TRAIN, TRIAL_ID,
                                   experiment_id, git_commit)
from tuning.trial.metrics import DEFAULT_METRIC, logged, mlflow_key

ERROR_CHARS = 4000        # the tail of a failed trial's error kept in its q3r.error tag


def evaluation_metrics(result: dict, step: int, metric=DEFAULT_METRIC) -> list:
    """The MLflow metrics of one evaluation (``acc``, ``acc_at_0.2``, ``diag/...``; the sweep's ``metric``),
    at ``step`` (the epoch)."""
    now = int(time.time() * 1000)
    return [Metric(mlflow_key(k), float(v), now, step) for k, v in result.items()
            if logged(k, metric) and isinstance(v, (int, float))]


def confirmed_trial(config: dict) -> str:
    """The search trial a confirmation config trains again (``{"point": {..., "confirms": id}}``), else ""."""
    return str(flat_config(config).get("confirms") or "")


def final_status(result: Optional[dict], max_t: int) -> str:
    """completed, stopped (by the scheduler), diverged or collapsed, from a trial's last result."""
    status = (result or {}).get("status", "running")
    if status == "running":
        return COMPLETED if (result or {}).get("epoch", 0) >= max_t else STOPPED
    return status


class Undeliverable(ValueError):
    """A spooled operation that no server can take (it names a trial that has no run)."""


def transient(error: Exception) -> bool:
    """Whether a failed tracking call may succeed later: anything but the server's 4xx answer and
    ``Undeliverable``."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, Undeliverable):
        return False
    if isinstance(error, MlflowException):
        return not 400 <= error.get_http_status_code() < 500
    return True


class RunMirror:
    """Delivers the spooled operations of ``TrialRuns`` to MLflow, each idempotently.

    ``start`` finds the trial's child run by its tags (``q3r.trial_id`` and the parent) or creates
    it, then sets its parameters and tags and marks it running (repeating any of it changes nothing);
    ``metrics`` logs one evaluation unless its step (the epoch) is not after the run's last logged
    one, which it reads from MLflow when it first meets the run (no step twice, also after a resume),
    with the timestamp of the evaluation, so that a batch sent again after a lost reply is the
    same row to MLflow's SQL store; ``finish`` sets ``q3r.status`` (and ``q3r.error``: the last lines of
    a failed trial's error) and ends the run.
    """

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._client: Optional[MlflowClient] = None
        self._runs: dict[tuple, str] = {}         # (parent, trial id) -> run id
        self._last_step: dict[str, int] = {}      # run id -> last epoch logged

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __call__(self, op: dict) -> None:
        run_id = self.run_of(op)
        if op["op"] == "start":
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()],
                                  tags=[RunTag(k, v) for k, v in op["tags"].items()])
            self.client.update_run(run_id, status="RUNNING")
        elif op["op"] == "metrics":
            step = int(op["step"])
            if step <= self._last_step.get(run_id, 0):
                return
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, step) for k, v, t in op["metrics"]],
                                  tags=[RunTag(STATUS, "running")])
            self._last_step[run_id] = step
        elif op["op"] == "finish":
            if op.get("error"):
                self.client.set_tag(run_id, ERROR, op["error"])
            self.client.set_tag(run_id, STATUS, op["status"])
            self.client.set_terminated(run_id, op["run_status"])
        else:
            raise Undeliverable(f"unknown spooled operation {op['op']!r}")

    def run_of(self, op: dict) -> str:
        key = (op["parent"], op["trial"])
        if key in self._runs:
            return self._runs[key]
        exp_id = experiment_id(self.client, op["experiment"])
        found = self.client.search_runs([exp_id], filter_string=f"tags.`{TRIAL_ID}` = '{op['trial']}' and "
                                                                f"tags.`{PARENT}` = '{op['parent']}'")
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "epoch")
            self._last_step[run_id] = max((int(m.value) for m in history), default=0)
        elif op["op"] == "start":
            run_id = self.client.create_run(exp_id, tags=op["tags"]).info.run_id
            self._last_step[run_id] = 0
        else:
            raise Undeliverable(f"trial {op['trial']} has no MLflow run under parent {op['parent']} to log into")
        self._runs[key] = run_id
        return run_id


def open_spool(folder, tracking_uri: str, log=print) -> Spool:
    """The sweep's spool in this process, sending to ``tracking_uri`` through a ``RunMirror``."""
    return Spool.of(folder, RunMirror(tracking_uri), transient, log)


class TrainRun:
    """One ``q3r-tune train`` as an MLflow run: the spec as parameters (and as the ``q3r.config`` tag),
    every evaluation stepped by epoch under the sweeps' metric names, ``q3r.status`` and the checkpoint
    file (``q3r.checkpoint``), so that ``q3r-tune export --run RUN_ID`` finds the model. With
    ``resume``, the latest run of the same checkpoint continues (no run is duplicated)."""

    def __init__(self, client: MlflowClient, experiment: str, cfg, checkpoint: str, resume: bool = False):
        self.client = client
        self.metric = cfg.train.metric.as_metric()
        exp_id = experiment_id(client, experiment)
        found = client.search_runs([exp_id], filter_string=f"tags.`{CHECKPOINT}` = '{checkpoint}'",
                                   order_by=["attributes.start_time DESC"], max_results=1) if resume else []
        if found:
            self.run_id = found[0].info.run_id
            history = client.get_metric_history(self.run_id, "epoch")
            self.last_step = max((int(m.value) for m in history), default=0)
            client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {ROLE: TRAIN, TECHNIQUE: cfg.technique.name, STATUS: "running", CONFIG: json.dumps(cfg.to_dict()),
                    CHECKPOINT: checkpoint, "mlflow.runName": f"{cfg.technique.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                    "mlflow.source.git.commit": git_commit()}
            self.run_id = client.create_run(exp_id, tags=tags).info.run_id
            client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in cfg.flat().items()])
            self.last_step = 0
        self.client.set_tag(self.run_id, STATUS, "running")

    def report(self, metrics: dict) -> None:
        step = int(metrics.get("epoch", 0))
        if step <= self.last_step:
            return
        self.client.log_batch(self.run_id, metrics=evaluation_metrics(metrics, step, self.metric),
                              tags=[RunTag(STATUS, str(metrics.get("status", "running")))])
        self.last_step = step

    def finish(self, status: str, error: str = "") -> None:
        if error:
            self.client.set_tag(self.run_id, ERROR, error[-ERROR_CHARS:])
        self.client.set_tag(self.run_id, STATUS, status)
        self.client.set_terminated(self.run_id, "FAILED" if status == FAILED else "FINISHED")

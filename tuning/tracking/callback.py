"""The Ray Tune callback that mirrors every trial of a sweep into a child run of its parent run."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback

from tuning.analysis.records import CONFIRMATION, FAILED, SEARCH
from tuning.tracking.mirror import ERROR_CHARS, confirmed_trial, evaluation_metrics, final_status, open_spool
from tuning.tracking.spool import Spool
from tuning.tracking.store import CONFIG, CONFIRMS, PARAMS, PARENT, ROLE, STATUS, TECHNIQUE, TRIAL_ID
from tuning.trial.metrics import DEFAULT_METRIC, Metric

ERROR_LINES = 12          # the lines of a failed trial's error its MLflow run keeps (q3r.error)


def error_tail(trial) -> str:
    """The last lines of the error Ray recorded for ``trial`` (its ``error.txt``): the user's exception."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-ERROR_LINES:])[-ERROR_CHARS:]


class TrialRuns(Callback):
    """A Ray Tune callback that mirrors every trial into a child run of the sweep's parent run.

    It never calls MLflow on Ray's event loop: each event becomes one operation in the sweep's
    durable spool (``tuning.tracking.spool``), which a background thread sends to MLflow in order
    (``RunMirror``). ``spool.slowest_append`` is the longest time a callback spent on it.
    """

    metric: Metric = DEFAULT_METRIC                # the sweep's (a callback pickled before it had one: accuracy)

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str, trial_config, max_t: int,
                 spool: str, metric: Metric = DEFAULT_METRIC):
        self.tracking_uri, self.experiment, self.parent = tracking_uri, experiment, parent_run_id
        self.trial_config = trial_config          # (Ray config) -> (technique, params, TrialSpec)
        self.max_t = max_t
        self.spool_path = str(spool)              # only a path: the callback is pickled with Ray's state
        self.metric = metric

    @property
    def spool(self) -> Spool:
        return open_spool(self.spool_path, self.tracking_uri)

    def _op(self, kind: str, trial, since: float, **fields) -> None:
        self.spool.append({"op": kind, "trial": trial.trial_id, "parent": self.parent,
                           "experiment": self.experiment, **fields}, since=since)

    def on_trial_start(self, iteration, trials, trial, **info):
        since = time.perf_counter()
        technique, params, cfg = self.trial_config(trial.config)
        confirms = confirmed_trial(trial.config)
        tags = {PARENT: self.parent, TRIAL_ID: trial.trial_id, TECHNIQUE: technique, STATUS: "running",
                PARAMS: json.dumps(params), CONFIG: json.dumps(cfg.to_dict()),
                ROLE: CONFIRMATION if confirms else SEARCH,
                "mlflow.runName": f"{technique}-{trial.trial_id}" + (f"-seed{cfg.train.seed}" if confirms else "")}
        if confirms:
            tags[CONFIRMS] = confirms
        self._op("start", trial, since, tags=tags, params={k: str(v) for k, v in cfg.flat().items()})

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        since = time.perf_counter()
        step = int(result.get("epoch", 0))
        metrics = [(m.key, m.value, m.timestamp) for m in evaluation_metrics(result, step, self.metric)]
        self._op("metrics", trial, since, step=step, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._op("finish", trial, time.perf_counter(), status=final_status(trial.last_result, self.max_t),
                 run_status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._op("finish", trial, time.perf_counter(), status=FAILED, run_status="FAILED", error=error_tail(trial))

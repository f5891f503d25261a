"""MLflow bookkeeping: one parent run per sweep, one child run per trial, no duplicates on resume.

Runs are found again by tags, never created twice: the parent carries ``q3r.role = sweep``, each
child ``q3r.trial_id``, ``mlflow.parentRunId`` and ``q3r.role = trial`` (a search trial) or
``confirmation`` (a configuration trained again with another seed; ``q3r.confirms`` names the trial). MLflow metric names may not contain ``@``, so the
trial metric ``acc@0.2`` is logged as ``acc_at_0.2`` (``mlflow_key`` / ``metric_key`` convert).
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .records import COMPLETED, CONFIRMATION, FAILED, SEARCH, STOPPED
from .spool import Spool

ROLE, SWEEP = "q3r.role", "sweep"
TRIAL_ID, STATUS, TECHNIQUE, PARAMS, CONFIG = "q3r.trial_id", "q3r.status", "q3r.technique", "q3r.params", "q3r.config"
CONFIRMS = "q3r.confirms"          # a confirmation run: the trial_id of the search trial it trains again
STORAGE = "q3r.storage"            # a sweep's parent run: the folder of Ray's trial state and checkpoints
CHECKPOINT = "q3r.checkpoint"      # a q3r-tune train run: its checkpoint file
TRAIN = "train"                    # the q3r.role of a q3r-tune train run
PARENT = "mlflow.parentRunId"
LOGGED = ("acc", "objective", "train_loss", "epoch", "time_s")      # plus every acc@/params@/targeted@/diag/ key
PACKAGES = ("q3r-tune", "torch", "timm", "transformers", "ray", "optuna", "mlflow", "peft")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable path, unknown sweep)."""


def default_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> Optional[str]:
    """Where a sqlite store keeps artifacts: ``mlartifacts/`` beside the database (not in the cwd)."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


def mlflow_key(key: str) -> str:
    return key.replace("@", "_at_")


def metric_key(key: str) -> str:
    return key.replace("_at_", "@")


ACCEPTED = "sqlite:///PATH.db, http(s)://HOST:PORT, databricks, postgresql://, mysql:// or mssql://"
SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def check_uri(uri: str) -> None:
    """A ``TrackingError`` in one line unless ``uri`` is a tracking URI q3r-tune works with (not a path)."""
    scheme, sep, _ = uri.partition(":")
    scheme = scheme.split("+")[0].lower()                     # postgresql+psycopg2://...
    if scheme == "databricks" or (scheme in SCHEMES and "://" in uri):
        return
    if not sep or len(scheme) == 1 or scheme == "file":       # a path (or a Windows drive letter), a file store
        path = uri.split(":", 1)[1].removeprefix("//") if scheme == "file" else uri
        raise TrackingError(f"tracking URI {uri!r} is a path, not a tracking URI: write sqlite:///{path} for a "
                            f"database file (sqlite:////abs/path.db for an absolute path) or http://HOST:PORT for a "
                            f"server; accepted: {ACCEPTED}")
    raise TrackingError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; accepted: {ACCEPTED}")


def check_tracking(uri: str, timeout: float = 5.0, looking_for: Optional[str] = None) -> MlflowClient:
    """A client for ``uri``, or a ``TrackingError`` that names the URI, before any trial starts.

    ``looking_for`` ("sweep named 'x'", "run 'id'"): what a command that only reads looks for; such a
    command never creates a store (a sqlite file that does not exist holds no such sweep or run)."""
    check_uri(uri)
    db = sqlite_path(uri)
    if looking_for is not None and db is not None and not db.is_file():
        raise TrackingError(f"no {looking_for} in the tracking store {uri} (there is no file {db}); pass the "
                            f"--tracking-uri it was tracked in")
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                if reply.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {reply.status} at /health")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); "
                                f"start one with `mlflow server --host HOST --port PORT` or pass another "
                                f"--tracking-uri") from None
    elif db is not None:
        folder = db.parent
        if not folder.is_dir():
            raise TrackingError(f"tracking URI {uri}: folder {folder} does not exist")
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"tracking store {uri} cannot be used: {e}") from None
    return client


def experiment_id(client: MlflowClient, name: str, create: bool = True) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        raise TrackingError(f"no sweep named {name!r} in the tracking store {client.tracking_uri}")
    root = artifact_root(client.tracking_uri)
    return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def find_sweep(client: MlflowClient, name: str):
    """The latest parent run of the sweep named ``name`` (its MLflow experiment)."""
    exp_id = experiment_id(client, name, create=False)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{ROLE}` = '{SWEEP}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"experiment {name!r} in {client.tracking_uri} holds no q3r-tune sweep")
    return runs[0]


def start_sweep(client: MlflowClient, name: str, spec_dict: dict, storage: str) -> str:
    """Create the parent run: the spec, the git commit, package versions; returns its run id."""
    exp_id = experiment_id(client, name)
    tags = {ROLE: SWEEP, "q3r.storage": storage, "mlflow.runName": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            "mlflow.source.git.commit": git_commit()}
    tags.update({f"version.{p}": version(p) for p in PACKAGES})
    run = client.create_run(exp_id, tags=tags)
    flat = {k: v for k, v in spec_dict.items() if not isinstance(v, (dict, list))}
    flat.update({f"{sec}.{k}": v for sec in ("scheduler", "searcher", "resources")
                 for k, v in spec_dict.get(sec, {}).items()})
    flat["techniques"] = ",".join(spec_dict.get("techniques", {}))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
    client.log_dict(run.info.run_id, spec_dict, "sweep_spec.yaml")
    return run.info.run_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def evaluation_metrics(result: dict, step: int) -> list:
    """The MLflow metrics of one evaluation (``acc``, ``acc_at_0.2``, ``diag/...``), at ``step`` (the epoch)."""
    now = int(time.time() * 1000)
    return [Metric(mlflow_key(k), float(v), now, step) for k, v in result.items()
            if (k in LOGGED or "@" in k or k.startswith("diag/")) and isinstance(v, (int, float))]


def confirmed_trial(config: dict) -> str:
    """The search trial a confirmation config trains again (``{"point": {..., "confirms": id}}``), else ""."""
    point = config.get("point") if isinstance(config.get("point"), dict) else config
    return str(point.get("confirms") or "")


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


def spool_folder(storage: str) -> Path:
    """A sweep's tracking spool: ``mlflow-spool/`` in the folder of its Ray state (``q3r.storage``)."""
    return Path(storage) / "mlflow-spool"


class RunMirror:
    """Delivers the spooled operations of ``TrialRuns`` to MLflow, each idempotently.

    ``start`` finds the trial's child run by its tags (``q3r.trial_id`` and the parent) or creates
    it, then sets its parameters and tags and marks it running (repeating any of it changes nothing);
    ``metrics`` logs one evaluation unless its step (the epoch) is not after the run's last logged
    one, which it reads from MLflow when it first meets the run (no step twice, also after a resume),
    with the timestamp of the evaluation, so that a batch sent again after a lost reply is the
    same row to MLflow's SQL store; ``finish`` sets ``q3r.status`` and ends the run.
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


class TrialRuns(Callback):
    """A Ray Tune callback that mirrors every trial into a child run of the sweep's parent run.

    It never calls MLflow on Ray's event loop: each event becomes one operation in the sweep's
    durable spool (``tuning.spool``), which a background thread sends to MLflow in order
    (``RunMirror``). ``spool.slowest_append`` is the longest time a callback spent on it.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str, trial_config, max_t: int,
                 spool: str):
        self.tracking_uri, self.experiment, self.parent = tracking_uri, experiment, parent_run_id
        self.trial_config = trial_config          # (Ray config) -> (technique, params, TrialSpec)
        self.max_t = max_t
        self.spool_path = str(spool)              # only a path: the callback is pickled with Ray's state

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
        metrics = [(m.key, m.value, m.timestamp) for m in evaluation_metrics(result, step)]
        self._op("metrics", trial, since, step=step, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._op("finish", trial, time.perf_counter(), status=final_status(trial.last_result, self.max_t),
                 run_status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._op("finish", trial, time.perf_counter(), status=FAILED, run_status="FAILED")


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
        self.client.log_batch(self.run_id, metrics=evaluation_metrics(metrics, step),
                              tags=[RunTag(STATUS, str(metrics.get("status", "running")))])
        self.last_step = step

    def finish(self, status: str) -> None:
        self.client.set_tag(self.run_id, STATUS, status)
        self.client.set_terminated(self.run_id, "FAILED" if status == FAILED else "FINISHED")

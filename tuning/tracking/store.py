"""The MLflow store of q3r-tune: tracking URIs, the client check, and a sweep's parent run.

Runs are found again by tags, never created twice: the parent carries ``q3r.role = sweep``, each
child ``q3r.trial_id``, ``mlflow.parentRunId`` and ``q3r.role = trial`` (a search trial) or
``confirmation`` (a configuration trained again with another seed; ``q3r.confirms`` names the trial).
A trial's metric ``acc@0.2`` is logged as ``acc_at_0.2`` (``tuning.trial.metrics.mlflow_key``).
Imports MLflow, never Ray.
"""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Optional

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

ROLE, SWEEP = "q3r.role", "sweep"
TRIAL_ID, STATUS, TECHNIQUE, PARAMS, CONFIG = "q3r.trial_id", "q3r.status", "q3r.technique", "q3r.params", "q3r.config"
CONFIRMS = "q3r.confirms"          # a confirmation run: the trial_id of the search trial it trains again
STORAGE = "q3r.storage"            # a sweep's parent run: the folder of Ray's trial state and checkpoints
ERROR = "q3r.error"                # a failed trial: the last lines of its error
CHECKPOINT = "q3r.checkpoint"      # a q3r-tune train run: its checkpoint file
ERROR = "q3r.error"                # a failed trial: the last lines of its error (the user's exception)
TRAIN = "train"                    # the q3r.role of a q3r-tune train run
PARENT = "mlflow.parentRunId"
SPEC_ARTIFACT = "sweep_spec.yaml"  # a sweep's parent run: its spec, as the driver ran it
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
    tags = {ROLE: SWEEP, STORAGE: storage, "mlflow.runName": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            "mlflow.source.git.commit": git_commit()}
    tags.update({f"version.{p}": version(p) for p in PACKAGES})
    run = client.create_run(exp_id, tags=tags)
    flat = {k: v for k, v in spec_dict.items() if not isinstance(v, (dict, list))}
    flat.update({f"{sec}.{k}": v for sec in ("metric", "scheduler", "searcher", "resources")
                 for k, v in spec_dict.get(sec, {}).items()})
    flat["techniques"] = ",".join(spec_dict.get("techniques", {}))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
    client.log_dict(run.info.run_id, spec_dict, SPEC_ARTIFACT)
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

"""Run a sweep: Ray Tune trials of the recipe, ASHA, Optuna, every trial mirrored into MLflow.

``run_sweep(spec)`` checks the tracking store first (an unreachable server fails before any
trial starts), opens the sweep's parent run, runs the Tuner, then publishes the results table,
the Pareto fronts and the recommendations on the parent run. ``resume_sweep(name)`` finds an
interrupted sweep by its experiment name and continues it: finished trials are kept, unfinished
ones continue from their last checkpoint, and every trial keeps its MLflow run.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")   # experiment state on disk within a second
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from tuning.trial.data import DatasetError, load_dataset
from tuning.trial.usercode import import_callable, shipped_files

from tuning.analysis.confirm import plan
from tuning.artifacts.publish import publish
from tuning.analysis.recommend import BUDGETS
from tuning.analysis.records import FAILED, TrialRecord
from tuning.tracking.results import load_records
from tuning.sweep.schedulers import TechniqueASHA
from tuning.sweep.searcher import make_searcher
from tuning.spec.sweep import SweepSpec, from_dict
from tuning.tracking.store import STATUS, TrackingError, check_tracking, default_uri, find_sweep, start_sweep
from tuning.tracking.callback import TrialRuns
from tuning.tracking.mirror import open_spool, spool_folder
from tuning.sweep.trainable import train_trial, trial_of

PATH_FIELDS = (("data", "data_root"), ("data", "tokenizer"), ("model", "path"), ("model", "init"))
TRACKING_WAIT = 60.0       # seconds a sweep waits at its end for a tracking server that does not answer


class TrackingDown(TrackingError):
    """The tracking server did not answer in time: the sweep's logging is kept in its spool."""


@dataclass
class SweepOutcome:
    name: str
    tracking_uri: str
    parent_run_id: str
    storage: str
    records: list
    summary: dict


def resolve_paths(spec_dict: dict, base: Path) -> dict:
    """Relative data/model paths made absolute: trials run in their own working directories."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec_dict.items()}
    for section, key in PATH_FIELDS:
        value = out.get(section, {}).get(key)
        if value and not Path(value).is_absolute():
            out[section][key] = str((base / value).resolve())
    if out.get("function"):                  # the user's code: next to the spec (load_spec), else here
        out["code_dir"] = str((base / (out.get("code_dir") or ".")).resolve())
    return out


def trial_config(spec_dict: dict, config: dict):
    """(technique, params, TrialSpec) of one Ray trial config; picklable through functools.partial."""
    return trial_of(from_dict(spec_dict), config)


def preflight(spec: SweepSpec) -> None:
    """Fail before Ray starts when the base trial's data or model is not where the spec says.

    Reads the dataset once with a one-item training split (ImageNet-style folders: only their
    layout, not the million files) and checks a Hugging Face model path exists; a spec with ``function``
    imports it instead (``UserCodeError`` in one line when it does not).
    """
    if spec.function is not None:
        import_callable(spec.function, [spec.code_dir])
        return
    d = spec.data
    if d.name == "imagefolder":
        root = Path(d.data_root or ".")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DatasetError(f"{spec.source}: imagefolder: missing folder {root / split}; lay the images "
                                   f"out as {root}/train/<class>/<image> and {root}/val/<class>/<image>")
    else:
        load_dataset(d.name, data_root=d.data_root, augment=d.augment, download=d.download,
                     image_size=d.image_size, task=d.task, tokenizer=d.tokenizer, max_length=d.max_length, limit=1,
                     classes=d.classes)
    if spec.model.init and not Path(spec.model.init).is_file():
        raise FileNotFoundError(f"{spec.source}: model.init {spec.model.init!r} does not exist; point it at a "
                                f"pretrained state dict (benchmarks/transfer_digits.py --pretrain-only writes one)")
    if spec.model.kind == "hf" and not (spec.model.path and Path(spec.model.path).exists()):
        raise FileNotFoundError(f"{spec.source}: model.path {spec.model.path!r} does not exist; point it at a "
                                f"local Hugging Face model directory (nothing is downloaded at run time)")


def connect(address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[int],
            spec: Optional[SweepSpec] = None, log: Callable[[str], None] = print) -> None:
    """Start Ray, or join the cluster at ``address``; the modules of a ``function`` spec go to every
    worker in Ray's runtime environment (``py_modules``). A Ray started beforehand by the caller keeps
    its own environment: then the workers find the function in ``code_dir`` or on their PYTHONPATH."""
    runtime_env = ship_function(spec) if spec is not None else None
    if ray.is_initialized():
        if runtime_env:
            log(f"warning: Ray was started before the sweep, so {spec.function!r} is not shipped to its workers: "
                f"they import it from {spec.code_dir} or their PYTHONPATH")
        return
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=False, runtime_env=runtime_env)


def ship_function(spec: SweepSpec) -> Optional[dict]:
    """Ray's runtime environment that carries a ``function`` spec's modules to every worker, or None."""
    if spec.function is None:
        return None
    files = shipped_files(import_callable(spec.function, [spec.code_dir]), spec.code_dir)
    return {"py_modules": files} if files else None


def check_resources(spec: SweepSpec) -> None:
    total = ray.cluster_resources()
    cpu, gpu = total.get("CPU", 0), total.get("GPU", 0)
    if spec.resources.cpu > cpu or spec.resources.gpu > gpu:
        raise TrackingError(f"{spec.source}: a trial asks for resources {{cpu: {spec.resources.cpu}, gpu: "
                            f"{spec.resources.gpu}}} but the Ray cluster has {{cpu: {cpu:g}, gpu: {gpu:g}}}")


def progress_reporter() -> tune.CLIReporter:
    """A status table every 30 s: trial, state, technique, epoch, objective."""
    return tune.CLIReporter(metric_columns={"epoch": "epoch", "objective": "objective", "acc": "acc"},
                            parameter_columns={"technique": "technique"}, max_report_frequency=30,
                            max_progress_rows=30, sort_by_metric=False)


def trainable_of(spec: SweepSpec, spec_dict: dict):
    return tune.with_resources(tune.with_parameters(train_trial, spec=spec_dict),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def run_config(name: str, storage: Path, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=2),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
                          progress_reporter=progress_reporter())


def search_config(spec: SweepSpec, optuna_storage: Optional[str]) -> tuple[tune.TuneConfig, dict]:
    """(TuneConfig, param_space) of the search: the spec's searcher, scheduler, trial count and concurrency.
    ``benchmarks/sweep_efficiency.py replay`` runs the same configuration against a recorded table."""
    searcher, param_space = make_searcher(spec, storage=optuna_storage if spec.searcher.kind != "grid" else None)
    if spec.scheduler.kind == "asha":
        scheduler = TechniqueASHA(time_attr="epoch", metric="objective", mode="max", max_t=spec.max_t,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor,
                                  min_samples=spec.scheduler.min_samples)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.total_samples,
                           max_concurrent_trials=spec.max_concurrent), param_space


def make_tuner(spec: SweepSpec, spec_dict: dict, storage: Path, run_name: str, callbacks: list):
    (storage / run_name).mkdir(parents=True, exist_ok=True)
    tune_config, param_space = search_config(spec, f"sqlite:///{storage / run_name / 'optuna.db'}")
    return tune.Tuner(trainable_of(spec, spec_dict), param_space=param_space, tune_config=tune_config,
                      run_config=run_config(run_name, storage, callbacks))


def confirmation_folder(search_folder: str) -> Path:
    """Ray's state of a sweep's confirmation runs: beside the search's, with ``-confirm`` appended."""
    return Path(f"{search_folder.rstrip('/')}-confirm")


def run_confirmation(client, uri: str, spec: SweepSpec, spec_dict: dict, parent: str, search_folder: str,
                     log: Callable[[str], None] = print) -> list:
    """Train the best configurations of each budget again with new seeds (``tuning.analysis.confirm``), or
    complete an interrupted confirmation from Ray's state: no seed runs twice. Returns Ray's results."""
    folder = confirmation_folder(search_folder)
    trainable = trainable_of(spec, spec_dict)
    if tune.Tuner.can_restore(str(folder)):
        log(f"completing the confirmation runs in {folder}")
        return list(tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True).fit())
    points = plan(load_records(client, parent, with_history=False), BUDGETS, spec.confirm.top, spec.confirm.seeds,
                  spec.seed)
    if not points:
        return []
    configs = len({p["confirms"] for p in points})
    log(f"confirming the best {spec.confirm.top} configuration(s) of each budget {list(BUDGETS)}: {configs} distinct "
        f"configuration(s) x {spec.confirm.seeds} new seeds = {len(points)} runs of {spec.epochs} epochs")
    callbacks = [TrialRuns(uri, spec.experiment_name, parent, functools.partial(trial_config, spec_dict), spec.epochs,
                           spool_folder(search_folder))]
    tuner = tune.Tuner(trainable, param_space={"point": tune.grid_search(points)},
                       tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent),
                       run_config=run_config(folder.name, folder.parent, callbacks))
    return list(tuner.fit())


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
              storage: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
              tracking_wait: float = TRACKING_WAIT, log: Callable[[str], None] = print) -> SweepOutcome:
    uri = tracking_uri or spec.tracking.uri or default_uri()
    client = check_tracking(uri)                              # before anything starts
    spec_dict = resolve_paths(spec.to_dict(), Path.cwd())
    resolved = from_dict(spec_dict, source=spec.source)
    preflight(resolved)
    for line in spec.advice():
        log(f"warning: {line}")
    storage_dir = Path(storage or Path.cwd() / "q3r-runs").resolve()
    run_name = f"{spec.experiment_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    connect(address, num_cpus, num_gpus, resolved, log)
    check_resources(spec)
    parent = start_sweep(client, spec.experiment_name, spec_dict, str(storage_dir / run_name))
    share = "" if spec.searcher.kind == "grid" else " (" + ", ".join(f"{t} {n}" for t, n in spec.allocation().items()) + ")"
    log(f"sweep {spec.experiment_name}: {spec.total_samples} trials{share}, MLflow parent run {parent} in {uri}")
    folder = str(storage_dir / run_name)
    callbacks = [TrialRuns(uri, spec.experiment_name, parent, functools.partial(trial_config, spec_dict), spec.max_t,
                           spool_folder(folder))]
    tuner = make_tuner(spec, spec_dict, storage_dir, run_name, callbacks)
    results = list(tuner.fit())
    settle(spec.experiment_name, uri, folder, tracking_wait, log)
    results += run_confirmation(client, uri, spec, spec_dict, parent, folder, log)
    settle(spec.experiment_name, uri, folder, tracking_wait, log)
    return _finish(client, uri, spec, parent, folder, results, log)


def settle(name: str, uri: str, folder: str, wait: float, log: Callable[[str], None] = print) -> None:
    """Wait up to ``wait`` seconds for the sweep's spooled logging to reach MLflow; ``TrackingDown``
    (the spool kept on disk, and what to run later) if the server does not take it all by then."""
    spool = open_spool(spool_folder(folder), uri, log)
    left = spool.drain(wait)
    if left:
        where = "" if uri == default_uri() else f" --tracking-uri {uri}"
        raise TrackingDown(f"sweep {name}: the MLflow tracking server {uri} did not take the sweep's logging within "
                           f"{wait:g} s ({spool.last_error}); its {left} operation(s) are kept in {spool.folder}; when "
                           f"the server answers, `q3r-tune sync {name}{where}` sends them and `q3r-tune resume "
                           f"{name}{where}` also finishes the sweep")
    if spool.appended:
        log(f"MLflow logging: {spool.appended} operation(s) spooled and delivered; the slowest callback on Ray's "
            f"loop took {spool.slowest_append * 1000:.1f} ms")


def sync_sweep(name: str, *, tracking_uri: Optional[str] = None, wait: float = TRACKING_WAIT,
               log: Callable[[str], None] = print) -> int:
    """Send what the latest sweep of experiment ``name`` left in its spool; the number of operations sent."""
    uri = tracking_uri or default_uri()
    parent_run = find_sweep(check_tracking(uri, looking_for=f"sweep named {name!r}"), name)
    folder = parent_run.data.tags.get("q3r.storage", "")
    if not spool_folder(folder).is_dir():
        log(f"sweep {name}: no tracking spool in {folder!r}: nothing to send")
        return 0
    spool = open_spool(spool_folder(folder), uri, log)
    settle(name, uri, folder, wait, log)
    sent = spool.delivered - spool.delivered_at_open
    log(f"sweep {name}: {sent} spooled operation(s) sent to {uri}; none left in {spool.folder}")
    return sent


def _reopen(name: str, tracking_uri: Optional[str]):
    """(client, uri, parent run, spec as a dict, spec) of the latest sweep of experiment ``name``."""
    uri = tracking_uri or default_uri()
    client = check_tracking(uri, looking_for=f"sweep named {name!r}")
    parent_run = find_sweep(client, name)
    spec_dict = _load_spec_artifact(client, parent_run.info.run_id)
    return client, uri, parent_run, spec_dict, from_dict(spec_dict, source=f"sweep {name}")


def resume_sweep(name: str, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
                 num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, tracking_wait: float = TRACKING_WAIT,
                 log: Callable[[str], None] = print) -> SweepOutcome:
    """Continue the latest sweep of experiment ``name`` where its driver stopped (search, then confirmation),
    first sending what its spool holds."""
    client, uri, parent_run, spec_dict, spec = _reopen(name, tracking_uri)
    parent, path = parent_run.info.run_id, parent_run.data.tags.get("q3r.storage", "")
    if not tune.Tuner.can_restore(path):
        raise TrackingError(f"sweep {name!r}: its Ray experiment folder {path!r} is missing or holds no state")
    settle(name, uri, path, tracking_wait, log)
    connect(address, num_cpus, num_gpus, spec, log)
    client.update_run(parent, status="RUNNING")
    log(f"resuming sweep {name} from {path}")
    tuner = tune.Tuner.restore(path, trainable_of(spec, spec_dict), resume_unfinished=True, resume_errored=True)
    results = list(tuner.fit())
    settle(name, uri, path, tracking_wait, log)
    results += run_confirmation(client, uri, spec, spec_dict, parent, path, log)
    settle(name, uri, path, tracking_wait, log)
    return _finish(client, uri, spec, parent, path, results, log)


def confirm_sweep(name: str, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
                  num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, tracking_wait: float = TRACKING_WAIT,
                  log: Callable[[str], None] = print) -> SweepOutcome:
    """Run, or complete, the confirmation runs of the latest sweep of experiment ``name``."""
    client, uri, parent_run, spec_dict, spec = _reopen(name, tracking_uri)
    parent, path = parent_run.info.run_id, parent_run.data.tags.get("q3r.storage", "")
    if spec.confirm.top == 0 or spec.confirm.seeds == 0:
        raise TrackingError(f"sweep {name!r} has confirmation turned off (confirm: {spec.confirm.model_dump()}); "
                            f"run it again with confirm.top and confirm.seeds >= 1")
    settle(name, uri, path, tracking_wait, log)
    connect(address, num_cpus, num_gpus, spec, log)
    client.update_run(parent, status="RUNNING")
    results = run_confirmation(client, uri, spec, spec_dict, parent, path, log)
    settle(name, uri, path, tracking_wait, log)
    return _finish(client, uri, spec, parent, path, results, log)


def _load_spec_artifact(client, run_id: str) -> dict:
    import yaml
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(run_id=run_id, artifact_path="sweep_spec.yaml", tracking_uri=client.tracking_uri)
    return yaml.safe_load(Path(local).read_text())


def _finish(client, uri: str, spec: SweepSpec, parent: str, storage: str, grid, log) -> SweepOutcome:
    """Close leftover runs, publish the results on the parent run, close it."""
    records: list[TrialRecord] = load_records(client, parent)
    for r in records:
        if r.status == "running":              # the tuner has returned: no trial of this sweep still runs
            client.set_tag(r.run_id, STATUS, FAILED)
            client.set_terminated(r.run_id, "FAILED")
    records = load_records(client, parent)
    summary = publish(client, parent, spec, records, log=log)
    errors = sum(1 for r in grid if r.error is not None)
    for r in grid:
        if r.error is not None:              # the last line of its error; all of it in the trial's folder
            log(f"trial failed: {str(r.error).strip().splitlines()[-1]} (see {Path(r.path) / 'error.txt'})")
    client.set_terminated(parent, "FINISHED")
    log(f"MLflow: experiment {spec.experiment_name!r}, parent run {parent}, tracking URI {uri}"
        + (f"; {errors} trial(s) failed" if errors else ""))
    return SweepOutcome(spec.experiment_name, uri, parent, storage, records, summary)

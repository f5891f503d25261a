"""Run a sweep: Ray Tune trials of the recipe, ASHA, Optuna, every trial mirrored into MLflow.

``run_sweep(spec)`` checks the tracking store first (an unreachable server fails before any
trial starts), opens the sweep's parent run, runs the Tuner and the confirmation runs, then publishes
the results table, the Pareto fronts and the recommendations on the parent run (``Sweep.drive``).
``resume_sweep(name)`` finds an interrupted sweep by its experiment name and continues it: finished
trials are kept, unfinished ones continue from their last checkpoint, and every trial keeps its MLflow
run; ``confirm_sweep(name)`` runs or completes the confirmation alone.
"""
from __future__ import annotations

import functools
import os
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
from tuning.trial.metrics import DEFAULT_METRIC, Metric
from tuning.trial.usercode import check_imports, import_callable, shipped_files, user_code_paths
from tuning.trial.files import (STORAGE as DEFAULT_STORAGE, confirmation_folder, optuna_db, spool_folder,
                                sweep_folder_name)

from tuning.analysis.confirm import plan
from tuning.artifacts.publish import publish
from tuning.analysis.recommend import BUDGETS
from tuning.analysis.records import FAILED, RUNNING
from tuning.tracking.results import load_records
from tuning.sweep.schedulers import TechniqueASHA
from tuning.sweep.searcher import make_searcher
from tuning.spec.space import POINT
from tuning.spec.sweep import SweepSpec, from_dict
from tuning.tracking.store import (SPEC_ARTIFACT, STATUS, STORAGE, TrackingError, check_tracking, default_uri,
                                   find_sweep, start_sweep)
from tuning.tracking.callback import TrialRuns
from tuning.tracking.sync import TRACKING_WAIT, settle
from tuning.sweep.trainable import train_trial, trial_config
from tuning.sweep.data_parallel import workers_trainable
from tuning.sweep.progress import PROGRESS_LOG, Progress, TableLog

def reuse_actors(spec: SweepSpec) -> bool:
    """Whether a trial's process is kept for the next trial (Tune resets the function's session instead of
    starting a worker that imports torch, timm and the harness again: about 6 core-seconds a trial); every
    trial still builds its model, data, optimizer and seeds from its own config (``run_trial``). Not for
    trials on several workers: a stopped trial's actor must end, so that its trainer and placement group do
    (``trainer_groups``)."""
    return spec.resources.workers == 1


PATH_FIELDS = (("data", "data_root"), ("data", "tokenizer"), ("data", "code"), ("model", "path"), ("model", "init"),
               ("model", "code"))


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


def preflight(spec: SweepSpec) -> None:
    """Fail before Ray starts when the base trial's data or model is not where the spec says.

    Imports the spec's factories (``model.factory``, ``data.factory``), reads the dataset once with a
    one-item training split (ImageNet-style folders: only their layout, not the million files) and
    checks a Hugging Face model path exists; a spec with ``function`` imports it instead
    (``UserCodeError`` in one line when it does not).
    """
    if spec.function is not None:
        import_callable(spec.function, [spec.code_dir])
        return
    check_imports(spec)
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
                     classes=d.classes, factory=d.factory, kwargs=d.kwargs, code=d.code)
    if spec.model.init and not Path(spec.model.init).is_file():
        raise FileNotFoundError(f"{spec.source}: model.init {spec.model.init!r} does not exist; point it at a "
                                f"pretrained state dict (benchmarks/transfer_digits.py --pretrain-only writes one)")
    if spec.model.kind == "hf" and not (spec.model.path and Path(spec.model.path).exists()):
        raise FileNotFoundError(f"{spec.source}: model.path {spec.model.path!r} does not exist; point it at a "
                                f"local Hugging Face model directory (nothing is downloaded at run time)")


def connect(address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[int], code_paths=(),
            log: Callable[[str], None] = print) -> None:
    """Start Ray, or join the cluster at ``address``; ``code_paths`` (the user's modules, ``shipped_code``)
    go to every worker in Ray's runtime environment (``py_modules``). A Ray started beforehand by the
    caller keeps its own environment: then the workers import the user's code from the spec's folder or
    their PYTHONPATH."""
    if ray.is_initialized():
        if code_paths:
            log(f"warning: Ray was started before the sweep, so {', '.join(code_paths)} are not shipped to its "
                f"workers: they import the user's code from the spec's folder or their PYTHONPATH")
        return
    env = {"runtime_env": {"py_modules": list(code_paths)}} if code_paths else {}
    if address:
        ray.init(address=address, log_to_driver=False, **env)
    else:
        # address="local": a new Ray on this machine, never one that another process left running here
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=False, **env)


def shipped_code(spec: SweepSpec) -> list[str]:
    """The user's modules a sweep ships to Ray's workers: its factories' and its ``function``'s."""
    paths = user_code_paths(spec)
    if spec.function is not None:
        fn = import_callable(spec.function, [spec.code_dir])
        paths += [f for f in shipped_files(fn, spec.code_dir) if f not in paths]
    return paths


def check_resources(spec: SweepSpec) -> None:
    total = ray.cluster_resources()
    cpu, gpu = total.get("CPU", 0), total.get("GPU", 0)
    res = spec.resources
    if res.workers * res.cpu > cpu or res.workers * res.gpu > gpu:
        asks = f"{{workers: {res.workers}, cpu: {res.cpu}, gpu: {res.gpu}}}" if res.workers > 1 else \
            f"{{cpu: {res.cpu}, gpu: {res.gpu}}}"
        raise TrackingError(f"{spec.source}: a trial asks for resources {asks} but the Ray cluster has "
                            f"{{cpu: {cpu:g}, gpu: {gpu:g}}}")


def trainable_of(spec: SweepSpec, spec_dict: dict):
    return tune.with_resources(tune.with_parameters(train_trial, spec=spec_dict),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def run_config(name: str, storage: Path, callbacks: list, metric: Metric = DEFAULT_METRIC) -> tune.RunConfig:
    """Ray's status tables go to ``<storage>/<name>/progress.log``; the terminal gets ``Progress``'s lines."""
    return tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=2),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
                          progress_reporter=TableLog(Path(storage) / name / PROGRESS_LOG, metric))


def search_config(spec: SweepSpec, optuna_storage: Optional[str]) -> tuple[tune.TuneConfig, dict]:
    """(TuneConfig, param_space) of the search: the spec's searcher, scheduler, trial count and concurrency.
    ``benchmarks/sweep_efficiency.py replay`` runs the same configuration against a recorded table."""
    searcher, param_space = make_searcher(spec, storage=optuna_storage if spec.searcher.kind != "grid" else None)
    if spec.scheduler.kind == "asha":
        scheduler = TechniqueASHA(time_attr="epoch", metric="objective", mode=spec.score.mode, max_t=spec.max_t,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor,
                                  min_samples=spec.scheduler.min_samples)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.total_samples,
                           max_concurrent_trials=spec.max_concurrent, reuse_actors=reuse_actors(spec)), param_space


@dataclass
class Sweep:
    """One sweep as its driver holds it. ``drive`` is the flow of ``run_sweep``, ``resume_sweep`` and
    ``confirm_sweep``: the search (a new or a restored Tuner, or none), the confirmation runs, each followed
    by the spool settling into MLflow, then the results published on the parent run."""

    spec: SweepSpec
    spec_dict: dict
    client: object            # an MlflowClient of ``uri``
    uri: str
    parent: str               # the parent run's id
    folder: str               # Ray's state of the search: the parent run's q3r.storage
    wait: float = TRACKING_WAIT
    log: Callable[[str], None] = print

    @classmethod
    def reopen(cls, name: str, tracking_uri: Optional[str], wait: float, log: Callable[[str], None]) -> "Sweep":
        """The latest sweep of experiment ``name``, as its parent run recorded it."""
        uri = tracking_uri or default_uri()
        client = check_tracking(uri, looking_for=f"sweep named {name!r}")
        run = find_sweep(client, name)
        spec_dict = _load_spec_artifact(client, run.info.run_id)
        return cls(from_dict(spec_dict, source=f"sweep {name}"), spec_dict, client, uri, run.info.run_id,
                   run.data.tags.get(STORAGE, ""), wait, log)

    def restart(self, address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[int]) -> None:
        """Send what the spool holds, start Ray, mark the parent run running again."""
        self.settle()
        connect(address, num_cpus, num_gpus, shipped_code(self.spec), self.log)
        self.client.update_run(self.parent, status="RUNNING")

    def settle(self) -> None:
        settle(self.spec.experiment_name, self.uri, self.folder, self.wait, self.log)

    def tuner(self, folder: Path, param_space: dict, tune_config: tune.TuneConfig, max_t: int,
              total: int) -> tune.Tuner:
        """A Tuner of this sweep's ``total`` trials, its Ray state in ``folder``, every trial mirrored into MLflow,
        its progress printed by ``self.log``."""
        callback = TrialRuns(self.uri, self.spec.experiment_name, self.parent,
                             functools.partial(trial_config, self.spec_dict), max_t, spool_folder(self.folder),
                             self.spec.score)
        progress = Progress(total, max_t, self.spec.score.mode, log=self.log)
        return tune.Tuner(self.trainable(folder), param_space=param_space, tune_config=tune_config,
                          run_config=run_config(folder.name, folder.parent, [callback, progress], self.spec.score))

    def trainable(self, folder):
        """One process per trial (``trainable_of``), or ``resources.workers`` through Ray Train, their runs kept
        under ``folder`` (``data_parallel``)."""
        if self.spec.resources.workers > 1:
            return workers_trainable(self.spec, self.spec_dict, folder)
        return trainable_of(self.spec, self.spec_dict)

    def restore(self, folder) -> tune.Tuner:
        """The Tuner of the Ray state in ``folder``: finished trials kept, the others continued."""
        return tune.Tuner.restore(str(folder), self.trainable(folder), resume_unfinished=True,
                                  resume_errored=True)

    def drive(self, search: Optional[tune.Tuner]) -> SweepOutcome:
        results = []
        if search is not None:
            results = list(search.fit())
            self.settle()
        results += self.confirm()
        self.settle()
        return self.finish(results)

    def confirm(self) -> list:
        """Train the best configurations of each budget again with new seeds (``tuning.analysis.confirm``), or
        complete an interrupted confirmation from Ray's state: no seed runs twice. Returns Ray's results."""
        spec, folder = self.spec, confirmation_folder(self.folder)
        if tune.Tuner.can_restore(str(folder)):
            self.log(f"completing the confirmation runs in {folder}")
            return list(self.restore(folder).fit())
        top, seeds = spec.confirm.top, spec.confirm.seeds
        points = plan(load_records(self.client, self.parent, with_history=False), BUDGETS, top, seeds, spec.seed,
                      spec.score)
        if not points:
            return []
        self.log(f"confirming the best {top} configuration(s) of each budget {list(BUDGETS)}: "
                 f"{len({p['confirms'] for p in points})} distinct configuration(s) x {seeds} new seeds = "
                 f"{len(points)} runs of {spec.epochs} epochs")
        once = tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent,
                               reuse_actors=reuse_actors(spec))
        return list(self.tuner(folder, {POINT: tune.grid_search(points)}, once, spec.epochs, len(points)).fit())

    def finish(self, grid: list) -> SweepOutcome:
        """Close leftover runs, publish the results on the parent run, close it."""
        client, parent, name = self.client, self.parent, self.spec.experiment_name
        for r in load_records(client, parent, metric=self.spec.score):
            if r.status == RUNNING:            # the tuner has returned: no trial of this sweep still runs
                client.set_tag(r.run_id, STATUS, FAILED)
                client.set_terminated(r.run_id, "FAILED")
        records = load_records(client, parent, metric=self.spec.score)
        summary = publish(client, parent, self.spec, records, log=self.log)
        errors = sum(1 for r in grid if r.error is not None)
        for r in grid:
            if r.error is not None:          # the last line of its error; all of it in the trial's folder
                self.log(f"trial failed: {str(r.error).strip().splitlines()[-1]} (see {Path(r.path) / 'error.txt'})")
        client.set_terminated(parent, "FINISHED")
        self.log(f"MLflow: experiment {name!r}, parent run {parent}, tracking URI {self.uri}"
                 + (f"; {errors} trial(s) failed" if errors else ""))
        return SweepOutcome(name, self.uri, parent, self.folder, records, summary)


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
              storage: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
              tracking_wait: float = TRACKING_WAIT, log: Callable[[str], None] = print) -> SweepOutcome:
    """Run ``spec``: open its parent run, search, confirm, publish."""
    uri = tracking_uri or spec.tracking.uri or default_uri()
    client = check_tracking(uri)                              # before anything starts
    spec_dict = resolve_paths(spec.to_dict(), Path.cwd())
    resolved = from_dict(spec_dict, source=spec.source)
    preflight(resolved)
    for line in spec.advice():
        log(f"warning: {line}")
    folder = Path(storage or Path.cwd() / DEFAULT_STORAGE).resolve() / sweep_folder_name(spec.experiment_name)
    connect(address, num_cpus, num_gpus, shipped_code(spec), log)
    check_resources(spec)
    parent = start_sweep(client, spec.experiment_name, spec_dict, str(folder))
    share = "" if spec.searcher.kind == "grid" else " (" + ", ".join(f"{t} {n}" for t, n in spec.allocation().items()) + ")"
    log(f"sweep {spec.experiment_name}: {spec.total_samples} trials{share}, MLflow parent run {parent} in {uri}")
    folder.mkdir(parents=True, exist_ok=True)
    tune_config, param_space = search_config(spec, f"sqlite:///{optuna_db(folder)}")
    sweep = Sweep(spec, spec_dict, client, uri, parent, str(folder), tracking_wait, log)
    return sweep.drive(sweep.tuner(folder, param_space, tune_config, spec.max_t, spec.total_samples))


def resume_sweep(name: str, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
                 num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, tracking_wait: float = TRACKING_WAIT,
                 log: Callable[[str], None] = print) -> SweepOutcome:
    """Continue the latest sweep of experiment ``name`` where its driver stopped (search, then confirmation),
    first sending what its spool holds."""
    sweep = Sweep.reopen(name, tracking_uri, tracking_wait, log)
    if not tune.Tuner.can_restore(sweep.folder):
        raise TrackingError(f"sweep {name!r}: its Ray experiment folder {sweep.folder!r} is missing or holds no state")
    sweep.restart(address, num_cpus, num_gpus)
    log(f"resuming sweep {name} from {sweep.folder}")
    return sweep.drive(sweep.restore(sweep.folder))


def confirm_sweep(name: str, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
                  num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, tracking_wait: float = TRACKING_WAIT,
                  log: Callable[[str], None] = print) -> SweepOutcome:
    """Run, or complete, the confirmation runs of the latest sweep of experiment ``name``."""
    sweep = Sweep.reopen(name, tracking_uri, tracking_wait, log)
    confirm = sweep.spec.confirm
    if confirm.top == 0 or confirm.seeds == 0:
        raise TrackingError(f"sweep {name!r} has confirmation turned off (confirm: {confirm.model_dump()}); "
                            f"run it again with confirm.top and confirm.seeds >= 1")
    sweep.restart(address, num_cpus, num_gpus)
    return sweep.drive(None)


def _load_spec_artifact(client, run_id: str) -> dict:
    import yaml
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(run_id=run_id, artifact_path=SPEC_ARTIFACT, tracking_uri=client.tracking_uri)
    return yaml.safe_load(Path(local).read_text())

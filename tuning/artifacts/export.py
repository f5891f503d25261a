"""The compressed model of a sweep's recommendation (or of any tracked run): on disk and in MLflow.

``export_sweep(uri, name, budget, out)`` takes the recommended search trial of a sweep, finds its
last checkpoint in the sweep's Ray storage (the parent run's ``q3r.storage`` folder, or its
confirmation folder for a confirmation run: ``tuning.trial.files``), and writes the model truncated
and factorized at the recommended retention (``tuning.trial.export``). ``export_run(uri, run_id, out, retention=...)``
does the same for one run: a sweep trial or a ``q3r-tune train`` run (``q3r.checkpoint``).

``log_model`` logs such a model with MLflow's PyTorch flavour (an MLflow 3 *logged model* whose
source run is the sweep's parent run, with a validation batch as input example, optionally
registered); ``log_recommended_models`` does it for every budget of the recommendation table when
a sweep ends, and never fails the sweep. The model of a user's own loop (a ``function:`` spec) is
of the user's class, which MLflow cannot rebuild: its exported files are logged as run artifacts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tuning.analysis.recommend import BUDGETS, Recommendation, _budget, is_fraction, recommend
from tuning.analysis.records import SEARCH, TrialRecord
from tuning.tracking.store import CHECKPOINT, PARENT, ROLE, STORAGE, TRAIN, TrackingError, check_tracking
from tuning.trial.files import (CHECKPOINT as CHECKPOINT_FILE, INFO, SPEC, WEIGHTS, confirmation_folder,
                                 train_runs_folder)
from tuning.trial.metrics import DEFAULT_METRIC, Metric, level_key, params_key


@dataclass
class Export:
    result: object                     # tuning.trial.export.ExportResult
    record: TrialRecord                # the run whose model it is
    retention: float
    budget: Optional[object]           # the budget it was chosen for, if any
    run_id: str                        # the MLflow run it is logged on: the sweep's parent, or the run itself
    recommendation: Optional[Recommendation] = None
    metric: Metric = DEFAULT_METRIC    # the sweep's: what ``recorded_accuracy`` is

    @property
    def recorded_accuracy(self) -> Optional[float]:
        """The metric the run recorded at the retention (acc@p by default)."""
        return self.record.metrics.get(self.metric.at(self.retention))

    @property
    def recorded_parameters(self) -> Optional[int]:
        return self.record.metrics.get(params_key(self.retention))


def model_name(budget=None, retention: Optional[float] = None) -> str:
    """The logged model's name: ``model-budget-0_2``, ``model-budget-50000`` or ``model-retention-0_1``
    (MLflow model names may not contain '.', '/', ':' or '%')."""
    text = f"budget-{budget:g}" if budget is not None else f"retention-{float(retention):g}"
    return "model-" + text.replace(".", "_")


def find_checkpoint(trial_id: str, storage: str) -> Path:
    """The latest ``checkpoint.pt`` of Ray trial ``trial_id`` under a sweep's storage folder (search
    trials) or its ``-confirm`` sibling (confirmation runs), in its Ray Train run (``train/<trial id>``)
    when it ran on several workers; a FileNotFoundError naming the folders."""
    folders = [Path(storage), confirmation_folder(storage)] if storage else []
    pattern = re.compile(rf"_{re.escape(trial_id)}_\d+_")      # <trainable>_<trial id>_<index>_<params>...
    trial_dirs = [d for f in folders if f.is_dir() for d in sorted(f.iterdir()) if d.is_dir() and pattern.search(d.name)]
    runs = [d for f in folders if (d := train_runs_folder(f) / trial_id).is_dir()]
    if runs:                          # a trial on several workers: its checkpoints are in its Ray Train run
        trial_dirs = runs
    if len(trial_dirs) > 1:
        raise FileNotFoundError(f"trial {trial_id}: several trial folders match: {[str(d) for d in trial_dirs]}")
    checkpoints = [c for d in trial_dirs for c in d.glob("checkpoint_*") if (c / CHECKPOINT_FILE).is_file()
                   and c.name.rsplit("_", 1)[-1].isdigit()]
    if not checkpoints:
        where = " or ".join(str(f) for f in folders) or "(the sweep's parent run has no q3r.storage tag)"
        found = f"its trial folder {trial_dirs[0]} holds none" if trial_dirs else "no trial folder of it there"
        raise FileNotFoundError(f"trial {trial_id}: no checkpoint under {where} ({found}); the sweep's Ray storage "
                                f"may be on another machine: copy it here and pass --storage FOLDER")
    return max(checkpoints, key=lambda c: int(c.name.rsplit("_", 1)[-1])) / CHECKPOINT_FILE


def export_record(record: TrialRecord, checkpoint: Path, retention: float, out_dir, *, budget=None,
                  extra: Optional[dict] = None, verify: bool = False, metric: Metric = DEFAULT_METRIC):
    """``tuning.trial.export.export_model`` for a tracked run, with where it came from and the scores
    the run recorded at that retention in ``export.json``."""
    from tuning.trial.export import export_model
    from tuning.trial.spec import from_dict

    if not record.config:
        raise ValueError(f"run {record.run_id} carries no trial spec (tag q3r.config) to rebuild its model from")
    cfg = from_dict(record.config, f"the trial spec of run {record.run_id}")
    acc, params = metric.at(retention), params_key(retention)
    info = {"trial_id": record.trial_id, "run_id": record.run_id, "role": record.role, "status": record.status,
            "budget": budget, "recorded": {acc: record.metrics.get(acc), params: record.metrics.get(params),
                                          "epoch": record.epoch},
            **(extra or {})}
    return export_model(cfg, checkpoint, retention, out_dir, extra=info, expect_epoch=record.epoch or None,
                        verify=verify)


def export_recommendation(rec: Recommendation, storage: str, out_dir, extra: Optional[dict] = None,
                          verify: bool = False, parent_run_id: str = "") -> Export:
    """The recommended search trial's own model (not a confirmation seed's) at the recommended retention."""
    expected = "expected_accuracy" if rec.metric == DEFAULT_METRIC else f"expected_{rec.metric.name}"
    seeds = {expected: rec.point.accuracy, "seeds": rec.point.seeds,
             "std": rec.point.std if rec.point.seeds > 1 else None}
    result = export_record(rec.record, find_checkpoint(rec.record.trial_id, storage), rec.point.retention, out_dir,
                           budget=rec.budget, extra={**seeds, **(extra or {})}, verify=verify, metric=rec.metric)
    return Export(result, rec.record, rec.point.retention, rec.budget, parent_run_id, rec, rec.metric)


def export_sweep(uri: str, name: str, budget, out_dir, storage: Optional[str] = None, verify: bool = False) -> Export:
    """Export the recommendation of sweep ``name`` for ``budget`` into ``out_dir``."""
    from tuning.tracking.results import load_sweep, sweep_metric

    parent, records = load_sweep(uri, name, with_history=False)
    rec = recommend(records, budget, metric=sweep_metric(parent))
    folder = storage or parent.data.tags.get(STORAGE, "")
    extra = {"sweep": name, "parent_run_id": parent.info.run_id, "tracking_uri": uri}
    return export_recommendation(rec, folder, out_dir, extra, verify, parent.info.run_id)


def export_run(uri: str, run_id: str, out_dir, *, retention: Optional[float] = None, budget=None,
               storage: Optional[str] = None, verify: bool = False) -> Export:
    """Export the model of one run (a sweep trial, or a ``q3r-tune train`` run) at ``retention``, or at
    its best scored retention within ``budget``. ``storage``: where its checkpoint is now (a sweep's
    Ray storage folder, or a train run's output folder), if it moved."""
    from tuning.tracking.results import record_of, run_metric

    client = check_tracking(uri, looking_for=f"run {run_id!r}")
    try:
        run = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException for an unknown id
        raise TrackingError(f"no run {run_id!r} in the tracking store {uri}: {e}") from None
    record = record_of(client, run, with_history=False)
    metric = run_metric(client, run)
    tags = run.data.tags
    if (retention is None) == (budget is None):
        raise ValueError("give either a retention or a budget")
    rec = None
    if retention is None:
        rec = recommend([dataclasses.replace(record, role=SEARCH)], budget, statuses=(record.status,), metric=metric)
        retention, budget = rec.point.retention, rec.budget
    if tags.get(ROLE) == TRAIN:
        checkpoint = Path(storage) / CHECKPOINT_FILE if storage else Path(tags.get(CHECKPOINT, ""))
        if not checkpoint.is_file():
            raise FileNotFoundError(f"run {run_id}: its checkpoint {checkpoint} is missing (trained on another "
                                    f"machine?); copy the train output folder here and pass --storage FOLDER")
    elif PARENT in tags:
        folder = storage or client.get_run(tags[PARENT]).data.tags.get(STORAGE, "")
        checkpoint = find_checkpoint(record.trial_id, folder)
    else:
        raise TrackingError(f"run {run_id} is neither a q3r-tune train run nor a trial of a sweep")
    result = export_record(record, checkpoint, retention, out_dir, budget=budget,
                           extra={"tracking_uri": uri}, verify=verify, metric=metric)
    return Export(result, record, float(retention), budget, run_id, rec, metric)


def log_model(client, run_id: str, export: Export, name: str, register: Optional[str] = None):
    """Log ``export``'s model on run ``run_id`` with MLflow's PyTorch flavour; returns MLflow's ModelInfo
    (a function trial's: its files as artifacts, ``log_files``).

    Image models are saved in MLflow's safe ``pt2`` format (``torch.export``; loading needs torch, not
    q3r-tune) with a validation batch as input example; others (text) as a pickled module with q3r's
    code. The run's status is left as it was."""
    import mlflow
    import mlflow.pytorch
    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = export.result
    if is_function(export):
        return log_files(client, run_id, export, name, register)
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    tags = {"q3r.technique": export.record.technique, "q3r.trial_id": export.record.trial_id,
            "q3r.source_run_id": export.record.run_id, "q3r.retention": f"{export.retention:g}",
            "q3r.parameters": str(result.parameters), "q3r.params_at_p": str(result.counted)}
    if export.budget is not None:
        tags["q3r.budget"] = f"{export.budget:g}"
    if export.recorded_accuracy is not None:
        tags[f"q3r.{export.metric.key}_at_p"] = f"{export.recorded_accuracy:.6g}"
    common = {"name": name, "registered_model_name": register, "tags": tags,
              "metadata": {"q3r": json.loads(json.dumps(result.info))}}
    status = client.get_run(run_id).info.status
    try:
        with _tracking_uri(client.tracking_uri), mlflow.start_run(run_id=run_id):
            if result.example is not None:
                with warnings.catch_warnings():      # torch's pt2 archive on CPU weights: "may cause issues when your
                    warnings.filterwarnings("ignore", message="No complete tensor found")   # weights are not on CPU"
                    return mlflow.pytorch.log_model(result.model, input_example=result.example,
                                                    serialization_format="pt2", pip_requirements=[torch_req], **common)
            import q3r
            return mlflow.pytorch.log_model(result.model, serialization_format="pickle",
                                            code_paths=[str(Path(q3r.__file__).parent)],
                                            pip_requirements=[torch_req, "timm", "transformers", "peft"], **common)
    finally:
        if status != "FINISHED":
            client.update_run(run_id, status=status)        # end_run marked it FINISHED


def is_function(export: Export) -> bool:
    """Whether ``export`` is the model of a user's own loop (a ``function:`` spec)."""
    return bool(export.result.info.get("function"))


@dataclass
class LoggedFiles:
    """Where ``log_files`` put an export's files (``model_uri``, as MLflow's ModelInfo names it)."""
    model_uri: str
    registered_model_version: None = None


def log_files(client, run_id: str, export: Export, name: str, register: Optional[str] = None) -> LoggedFiles:
    """Log the exported folder of a function trial (``model.safetensors``, ``spec.yaml``, ``export.json``) as
    artifacts of run ``run_id`` under ``name/``: MLflow cannot rebuild the user's class, so no logged model."""
    if register:
        raise ValueError(f"the model of function {export.result.info['function']!r} is of the user's own class, "
                         f"which MLflow cannot rebuild, so it cannot be registered; its files are in "
                         f"{export.result.folder} (leave out --register to log them on the run)")
    client.log_artifacts(run_id, str(export.result.folder), name)
    return LoggedFiles(f"runs:/{run_id}/{name}")


@contextlib.contextmanager
def _tracking_uri(uri: str):
    """MLflow's fluent API (``mlflow.pytorch.log_model`` logs through it, on the process-wide tracking URI)
    pointed at ``uri`` for a while, then as it was: the URI set before, or none set, and the
    MLFLOW_TRACKING_URI variable (which ``mlflow.set_tracking_uri`` also sets)."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)                 # None: none set, MLflow's default again
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_recommended_models(client, parent: str, records: list, log: Callable[[str], None] = print,
                           budgets=BUDGETS, metric: Metric = DEFAULT_METRIC) -> dict:
    """Log the model of every budget of the recommendation table on the sweep's parent run, as
    ``model-budget-<budget>``. A model that cannot be exported or logged (its checkpoint is on
    another machine, say) is logged as such and does not fail the sweep."""
    logged, failed, names, files = {}, {}, [], False
    try:
        storage = client.get_run(parent).data.tags.get(STORAGE, "")
        with tempfile.TemporaryDirectory() as tmp:
            for raw in budgets:
                budget = _budget(raw)
                try:
                    rec = recommend(records, budget, metric=metric)
                except ValueError:
                    continue
                name = model_name(budget)
                try:
                    export = export_recommendation(rec, storage, Path(tmp) / name, {"parent_run_id": parent},
                                                   parent_run_id=parent)
                    logged[f"{budget:g}"] = log_model(client, parent, export, name).model_uri
                    names.append(name)
                    files = files or is_function(export)
                except Exception as e:  # noqa: BLE001 - the sweep's results must not be lost to an export
                    failed[f"{budget:g}"] = f"{type(e).__name__}: {e}"
                    log(f"the model of budget {budget:g} could not be logged: {type(e).__name__}: {e}")
        if names and files:
            log(f"models logged on parent run {parent} as files: {', '.join(names)} (MLflow UI: its Artifacts; "
                f"load one into a fresh instance of your model with q3r.load_lowrank(model, "
                f"'<downloaded folder>/{WEIGHTS}'))")
        elif names:
            log(f"models logged on parent run {parent}: {', '.join(names)} (MLflow UI: the experiment's Models; "
                f"load one with mlflow.pytorch.load_model('runs:/{parent}/{names[0]}'))")
    except Exception as e:  # noqa: BLE001
        log(f"the models of the recommendation table could not be logged: {type(e).__name__}: {e}")
        return {"models": logged, "models_error": f"{type(e).__name__}: {e}"}
    return {"models": logged, **({"models_failed": failed} if failed else {})}


def describe(export: Export) -> list[str]:
    """What ``q3r-tune export`` prints: where the model is, its figures, how to load it."""
    r, level = export.result, level_key(export.retention)
    budget = "" if export.budget is None else (
        f" for a budget of {export.budget:g} of the targeted parameters" if is_fraction(export.budget)
        else f" for a budget of {export.budget:,} parameters")
    acc = export.recorded_accuracy
    lines = [f"exported {export.record.technique} trial {export.record.trial_id} (MLflow run {export.record.run_id}) "
             f"at retention {level}{budget} to {r.folder}",
             f"  parameters: {r.parameters:,} in the file ({params_key(export.retention)} recorded: "
             f"{export.recorded_parameters if export.recorded_parameters is None else format(export.recorded_parameters, ',')}"
             f"; dense model {r.dense_parameters:,}, {r.parameters / r.dense_parameters:.1%})",
             f"  {export.metric.name}: {export.metric.at(export.retention)} = "
             f"{'not scored' if acc is None else format(acc, '.4f')} "
             f"recorded at epoch {export.record.epoch} by this run on its validation split"]
    if export.recommendation is not None and export.recommendation.point.seeds > 1:
        p = export.recommendation.point
        lines.append(f"  (the recommendation's mean over {p.seeds} seeds: {p.accuracy:.4f} +- {p.std:.4f})")
    if "accuracy" in r.info:
        lines.append(f"  accuracy of the exported model, measured now: {r.info['accuracy']:.4f}")
    lines.append(f"  files: {r.folder / WEIGHTS}, {r.folder / SPEC}, {r.folder / INFO}")
    if is_function(export):
        lines.append(f"  load: model = q3r.load_lowrank(<a fresh instance of the model that function "
                     f"{r.info['function']} trains>, {str(r.folder / WEIGHTS)!r})")
    else:
        lines.append(f"  load: from tuning.trial.export import load_exported; model = load_exported({str(r.folder)!r})")
    return lines

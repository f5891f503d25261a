"""The names of what q3r-tune writes on disk: their one owner.

    <storage>/<experiment>-<YYYYmmdd-HHMMSS>/     a sweep's Ray state (its parent run's q3r.storage tag)
        mlflow-spool/                              its tracking spool (tuning.tracking.spool)
        optuna.db                                  its Optuna studies, one per technique
        <Ray trial folder>/checkpoint_NNNNNN/checkpoint.pt
        train/<Ray trial id>/checkpoint_NNNNNN/checkpoint.pt   a trial on several workers: its Ray Train run
    <storage>/<experiment>-<YYYYmmdd-HHMMSS>-confirm/   the Ray state of its confirmation runs
    runs/<spec name>/                              a ``q3r-tune train``: config.yaml, checkpoint.pt, scores.json
    <export folder>/                               an exported model: model.safetensors, spec.yaml, export.json

Pure: paths only.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Union

CHECKPOINT = "checkpoint.pt"           # a trial's checkpoint (tuning.trial.recipe.save_checkpoint)
STORAGE = "q3r-runs"                   # the default folder of the sweeps' Ray state, in the working directory
SPOOL = "mlflow-spool"                 # a sweep's tracking spool, in its Ray folder
OPTUNA_DB = "optuna.db"                # a sweep's Optuna studies, in its Ray folder
TRAIN_RUNS = "train"                   # in a sweep's Ray folder: the Ray Train runs of trials on several workers
CONFIRM = "-confirm"                   # appended to a sweep's Ray folder: its confirmation runs
TRAIN_CONFIG, SCORES = "config.yaml", "scores.json"                   # beside a train run's checkpoint
WEIGHTS, SPEC, INFO = "model.safetensors", "spec.yaml", "export.json"  # an exported model's folder

Folder = Union[str, Path]


def sweep_folder_name(experiment: str) -> str:
    """The name of a new sweep's Ray folder (and of its Ray experiment): ``<experiment>-<YYYYmmdd-HHMMSS>``."""
    return f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def confirmation_folder(sweep_folder: Folder) -> Path:
    """Ray's state of a sweep's confirmation runs: beside the search's, with ``-confirm`` appended."""
    return Path(f"{str(sweep_folder).rstrip('/')}{CONFIRM}")


def train_runs_folder(sweep_folder: Folder) -> Path:
    """Where the trials of a sweep with ``resources.workers`` > 1 keep their Ray Train runs, one per trial id."""
    return Path(sweep_folder) / TRAIN_RUNS


def spool_folder(sweep_folder: Folder) -> Path:
    """A sweep's tracking spool: ``mlflow-spool/`` in the folder of its Ray state (``q3r.storage``)."""
    return Path(sweep_folder) / SPOOL


def optuna_db(sweep_folder: Folder) -> Path:
    """The sqlite file of a sweep's Optuna studies."""
    return Path(sweep_folder) / OPTUNA_DB

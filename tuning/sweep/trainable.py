"""The Ray Tune trainable: one trial of a sweep is one ``tuning.trial.recipe.run_trial`` call (the
built-in loop, or the spec's own ``function``, imported from the modules Ray's runtime environment
shipped or else from the spec's ``code_dir``).

Every evaluation is forwarded to Ray with the sweep's scalar ``objective`` added and the
trial's checkpoint attached, so ASHA can stop the trial and a restarted worker (or a resumed
sweep) continues from the last evaluation instead of from scratch.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import ray
from ray import tune

from tuning.trial.files import CHECKPOINT
from tuning.trial.metrics import DEFAULT_METRIC, DIVERGED, Metric, TrialReport, diverged_objective, objective_value

from tuning.spec.sweep import from_dict
from tuning.spec.space import flat_config, split_config

DIVERGED_OBJECTIVE = diverged_objective()   # a diverged trial has no accuracy; it scores the worst objective, 0


def trial_metrics(metrics: TrialReport, objective: str, retentions, metric: Metric = DEFAULT_METRIC) -> TrialReport:
    """The dict a trial reports to Ray: the recipe's metrics plus ``objective`` (in the metric's units)."""
    out = dict(metrics)
    if metrics.get("status") == DIVERGED:
        out["objective"] = diverged_objective(metric)
    else:
        out["objective"] = objective_value(metrics, objective, retentions, metric)
    return out


def trial_of(sweep, config: dict):
    """(technique, params, TrialSpec) of a Ray config; a confirmation point also sets ``seed``."""
    point = flat_config(config)
    technique, params = split_config(point)
    cfg = sweep.trial_config(technique, params)
    if point.get("seed") is not None:
        cfg.train.seed = int(point["seed"])
    return technique, params, cfg


def trial_config(spec_dict: dict, config: dict):
    """(technique, params, TrialSpec) of one Ray trial config; picklable through functools.partial."""
    return trial_of(from_dict(spec_dict), config)


def shipped_modules() -> bool:
    """Whether this worker's runtime environment carries modules (``driver.ship_function``)."""
    return bool((ray.get_runtime_context().runtime_env or {}).get("py_modules"))


def train_trial(config: dict, spec: dict) -> None:
    """Ray Tune function trainable; ``spec`` is the sweep spec as a dict (``SweepSpec.to_dict()``)."""
    sweep = from_dict(spec)
    technique, params, cfg = trial_of(sweep, config)
    if cfg.function is not None and shipped_modules():
        cfg.code_dir = None                          # the driver's copy, not whatever this machine holds
    workdir = Path(tempfile.mkdtemp(prefix="q3r-trial-"))
    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:                       # a retried worker or a resumed sweep
        with checkpoint.as_directory() as d:
            shutil.copy(Path(d) / CHECKPOINT, workdir / CHECKPOINT)
        resume = True

    def report(metrics: TrialReport) -> None:
        out = trial_metrics(metrics, sweep.objective, sweep.retentions, sweep.score)
        has_ckpt = (workdir / CHECKPOINT).is_file() and metrics.get("status") != DIVERGED
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(workdir)) if has_ckpt else None)

    from tuning.trial.recipe import run_trial    # here, not at the top: see ``data_parallel.train_worker``

    try:
        run_trial(cfg, report=report, checkpoint_dir=str(workdir), resume=resume)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

"""Replay search strategies against the table through the sweep's own Tune configuration.

A strategy is a sweep spec (the build's, with another searcher, scheduler, objective, trial count or
allocation). ``replay`` gives it to ``tuning.sweep.driver.search_config``, the function ``q3r-tune sweep`` builds its
TuneConfig with (``TechniqueSearch`` of ``StudySearch``es or the grid, ``TechniqueASHA`` or FIFO,
``max_concurrent`` trials at once), and runs a Ray Tuner whose trainable, instead of training, reports the
table's rows of the suggested configuration. Each report waits for its simulated time (``clock.SimClock``:
the trial's start plus its recorded epoch times), so the concurrent trials' results reach the scheduler in
the order the real run's would, and ASHA's asynchronous rung decisions see the trials they would have seen,
whatever Ray's own latencies. A callback in the driver records every result in the order Tune processed
it; a trial's spend is the count of epochs reported by all trials up to its end.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
from ray import tune
from ray.tune import Callback

from tuning.analysis.records import SEARCH, TrialRecord
from tuning.spec.space import split_config
from tuning.spec.sweep import SweepSpec, from_dict
from tuning.sweep.trainable import trial_metrics
from tuning.tracking.mirror import final_status

from .confidence import seeds_by_config
from .scores import scored_metrics
from .table import Run
from .trainable import config_key, replay_trial


def by_config(runs: list[Run]) -> dict[tuple, Run]:
    """The grid's runs (role trial) by configuration key: its lowest seed's run."""
    return {key: rs[0] for key, rs in seeds_by_config(runs).items()}


def replay_metrics(run: Run, index: int, objective: str, retentions) -> dict:
    """What the trial reported at its ``index``-th evaluation: the row, its status, and the sweep's objective."""
    row = {k: v for k, v in run.rows[index].items() if k != "seconds"}
    row["status"] = run.status if index == len(run.rows) - 1 else "running"
    return trial_metrics(row, objective, retentions)


def reports_of(runs: list[Run], objective: str, retentions) -> dict:
    """key -> one [(recorded seconds, what the trial reports)] per seed of the configuration (in seed order): the
    table's rows through the sweep's ``trial_metrics``, so the objective is the strategy's."""
    return {key: [[(max(0.0, float(run.rows[i].get("seconds", 0.0))), replay_metrics(run, i, objective, retentions))
                   for i in range(len(run.rows))] for run in rs] for key, rs in seeds_by_config(runs).items()}


@dataclass
class Finished:
    """A trial of a replay, as it ended: its record and the epochs all trials had spent by then."""

    record: TrialRecord
    spend: int


class Events(Callback):
    """Every result in the order the driver processed it, and every trial's end with the spend so far."""

    def __init__(self, max_t: int, clock: Optional[str] = None):
        self.max_t, self.epochs, self.finished, self.clock = max_t, 0, [], clock

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs += 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, error=True)

    def _end(self, trial, error: bool = False) -> None:
        result = trial.last_result or {}
        technique, params = split_config(trial.config)
        status = "failed" if error else final_status(result, self.max_t)
        metrics = scored_metrics(result)
        record = TrialRecord(trial_id=trial.trial_id, technique=technique, params=params, status=status,
                             epoch=int(result.get("epoch", 0)), metrics=metrics)
        self.finished.append(Finished(record, self.epochs))
        if self.clock:
            ray.get(ray.get_actor(self.clock).done.remote(trial.trial_id))


def replay(spec: SweepSpec, runs: list[Run], scale: float = 0.0, workdir: Optional[Path] = None,
           clock: bool = True) -> list[Finished]:
    """Run ``spec``'s search against the table; the trials in the order they ended. Ray must be initialised.
    ``clock``: order the reports by simulated time (``SimClock``); ``scale``: also sleep scale x recorded time."""
    from tuning.spec.space import grid_points
    from tuning.sweep.driver import search_config

    from .clock import SimClock

    workdir = Path(workdir or tempfile.mkdtemp(prefix="q3r-replay-"))
    name = f"replay-{time.time_ns()}"
    (workdir / name).mkdir(parents=True, exist_ok=True)
    tune_config, param_space = search_config(spec, None)    # Optuna in memory: the same sampling, no sqlite
    tune_config.reuse_actors = True       # a runtime detail, no search decision: one worker process per slot
    total = len(grid_points(spec.spaces)) * spec.num_samples if spec.searcher.kind == "grid" else spec.total_samples
    actor = SimClock.options(name=name).remote(spec.max_concurrent, total) if clock else None
    events = Events(spec.max_t, name if clock else None)
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, reports=reports_of(runs, spec.objective, spec.retentions),
                             clock=name if clock else None, scale=scale, replay_seed=spec.seed),
        {"cpu": spec.resources.cpu, "gpu": 0})
    run_config = tune.RunConfig(name=name, storage_path=str(workdir), callbacks=[events], verbose=0,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    try:
        tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
    finally:
        if actor is not None:
            ray.kill(actor)
    return events.finished


def snap(points: dict, techniques: dict) -> dict:
    """Start points on the table's grid: each value the nearest (in log for positive numbers) of its parameter's
    choices there (ties: the lower); parameters fixed or absent there, and points left empty, dropped."""
    def near(v, choices):
        dist = [abs(math.log(c / v)) if v > 0 and c > 0 else abs(c - v) for c in choices]
        return min(zip(dist, choices))[1]
    out = {}
    for t, pts in (points or {}).items():
        space = techniques.get(t)
        if space is None:
            continue
        snapped = [{p: near(v, space[p]["choice"]) for p, v in pt.items() if isinstance(space.get(p), dict)}
                   for pt in pts]
        if any(snapped):
            out[t] = [pt for pt in snapped if pt]
    return out


def strategy_spec(base: dict, seed: int, searcher: str, scheduler: dict, num_samples: int,
                  objective: str = "mean", samples_per_technique: Optional[dict] = None,
                  startup: Optional[int] = None, start_points: Optional[dict] = None) -> SweepSpec:
    """The build's spec with another search: ``scheduler`` e.g. {"kind": "asha", "grace_period": 5, ...};
    ``startup``: the searcher's n_startup_trials (None: the spec's default); ``start_points``: the searcher's,
    snapped to the build's grid."""
    raw = copy.deepcopy(base)
    search = {"kind": searcher, **({"n_startup_trials": startup} if startup else {})}
    if start_points:
        search["start_points"] = snap(start_points, raw["techniques"])
    raw.update(seed=seed, searcher=search, scheduler=scheduler, objective=objective,
               num_samples=num_samples, samples_per_technique=samples_per_technique or {}, confirm={"top": 0, "seeds": 0})
    return from_dict(raw, f"strategy {searcher}+{scheduler.get('kind')}")


def grid_epochs(runs: list[Run]) -> float:
    """Epochs the full grid spends (its search trials, each to its end; a configuration's mean over seeds)."""
    return sum(sum(len(r.rows) for r in rs) / len(rs) for rs in seeds_by_config(runs).values())


def mean_epoch_seconds(runs: list[Run]) -> float:
    secs = [float(row.get("seconds", 0.0)) for r in runs for row in r.rows]
    return sum(secs) / len(secs) if secs else math.nan

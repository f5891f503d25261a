"""Search algorithms: seeded Optuna (TPE, multi-objective TPE, random) or a full grid.

Ray's ``OptunaSearch`` tells Optuna that a trial stopped by ASHA is COMPLETE with its last
value, which would teach the sampler that a trial cut at 10 epochs is as good as its score there.
``PruningOptunaSearch`` tells Optuna such trials were PRUNED, and gives diverged trials the worst
objective, so that the sampler learns to avoid their region.
"""
from __future__ import annotations

import warnings
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from .space import OptunaSpace, grid_points
from .spec import SweepSpec
from .trainable import DIVERGED_OBJECTIVE


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that records early-stopped trials as pruned (see the module docstring)."""

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = max_t

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if error or not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        status = result.get("status")
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if status == "diverged":
            values = [DIVERGED_OBJECTIVE] * len(metrics)
            self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        elif status == "running" and result.get("epoch", 0) < self.max_t:   # stopped by the scheduler
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            return super().on_trial_complete(trial_id, result, error)
        self._completed_trials.add(trial_id)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # group=True: the space is conditional on the technique; constant_liar: trials run in parallel
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)


def make_searcher(spec: SweepSpec, storage: Optional[str] = None):
    """(search algorithm, Ray param_space) for the spec's searcher kind.

    ``storage`` (an Optuna RDB URL such as ``sqlite:///sweep/optuna.db``) keeps the study on disk
    under the sweep's experiment name, where ``optuna.load_study`` and optuna-dashboard can read it.
    """
    kind = spec.searcher.kind
    if kind == "grid":
        return BasicVariantGenerator(random_state=spec.seed), {"point": tune.grid_search(grid_points(spec.spaces))}
    metrics = spec.objective_metrics()
    metric, mode = (metrics, ["max"] * len(metrics)) if kind == "multi" else ("objective", "max")
    searcher = PruningOptunaSearch(space=OptunaSpace(spec.spaces), metric=metric, mode=mode,
                                   sampler=make_sampler(kind, spec.seed), seed=spec.seed, max_t=spec.max_t,
                                   study_name=spec.experiment_name,
                                   storage=optuna.storages.RDBStorage(storage) if storage else None)
    return searcher, {}

"""Search algorithms: seeded Optuna (TPE, multi-objective TPE, random) or a full grid.

Every technique is searched by its own Optuna study, with its own trial budget (``TechniqueSearch``,
budgets from ``SweepSpec.allocation``), so that what TPE learns about LoRA never decides how often
AdamQ3R is tried. Ray's ``OptunaSearch`` tells Optuna that a trial stopped by ASHA is COMPLETE with its last
value, which would teach the sampler that a trial cut at 10 epochs is as good as its score there.
``PruningOptunaSearch`` tells Optuna such trials were PRUNED, and gives diverged trials the worst
objective, so that the sampler learns to avoid their region.
"""
from __future__ import annotations

import math
import pickle
import warnings
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from tuning.spec.space import OptunaSpace, grid_points
from tuning.spec.sweep import SweepSpec
from tuning.sweep.trainable import DIVERGED_OBJECTIVE


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
        if status == "diverged":               # the worst value: 0 for accuracy, +inf for a min metric
            modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
            values = [DIVERGED_OBJECTIVE if m == "max" else math.inf for m in modes]
            self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        elif status == "running" and result.get("epoch", 0) < self.max_t:   # stopped by the scheduler
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            return super().on_trial_complete(trial_id, result, error)
        self._completed_trials.add(trial_id)


class TechniqueSearch(Searcher):
    """One searcher per technique, each given its share of the trials (see the module docstring).

    ``suggest`` asks the technique furthest behind its share (issued / budget), so techniques are
    interleaved from the start; results go back to the searcher that suggested the trial.
    """

    def __init__(self, searchers: dict[str, Searcher], budgets: dict[str, int], metric, mode):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.budgets = searchers, dict(budgets)
        self.issued = {t: 0 for t in searchers}
        self.owner: dict[str, str] = {}          # Ray trial id -> technique

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True                             # every sub-searcher got its space, metric and mode when built

    def suggest(self, trial_id: str):
        open_ = [t for t in self.searchers if self.issued[t] < self.budgets[t]]
        if not open_:
            return Searcher.FINISHED
        technique = min(open_, key=lambda t: (self.issued[t] / self.budgets[t], list(self.searchers).index(t)))
        config = self.searchers[technique].suggest(trial_id)
        if isinstance(config, dict):
            self.issued[technique] += 1
            self.owner[trial_id] = technique
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def make_sampler(kind: str, seed: int, n_startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # group=True: the space is conditional on the technique; constant_liar: trials run in parallel
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=n_startup_trials)


def make_searcher(spec: SweepSpec, storage: Optional[str] = None):
    """(search algorithm, Ray param_space) for the spec's searcher kind.

    ``storage`` (an Optuna RDB URL such as ``sqlite:///sweep/optuna.db``) keeps one study per technique
    on disk, named ``<experiment>/<technique>``, where ``optuna.load_study`` and optuna-dashboard read it.
    """
    kind = spec.searcher.kind
    if kind == "grid":
        return BasicVariantGenerator(random_state=spec.seed), {"point": tune.grid_search(grid_points(spec.spaces))}
    metrics = spec.objective_metrics()
    direction = spec.score.mode                # the metric's: max (accuracy) or min (a loss)
    metric, mode = (metrics, [direction] * len(metrics)) if kind == "multi" else ("objective", direction)
    rdb = optuna.storages.RDBStorage(storage) if storage else None
    searchers = {}
    for i, (technique, space) in enumerate(spec.spaces.items()):
        seed = spec.seed + 1000 * i                 # independent, reproducible sampler streams
        searchers[technique] = PruningOptunaSearch(
            space=OptunaSpace({technique: space}), metric=metric, mode=mode, sampler=make_sampler(kind, seed, spec.searcher.n_startup_trials),
            seed=seed, max_t=spec.max_t, study_name=f"{spec.experiment_name}/{technique}", storage=rdb)
    return TechniqueSearch(searchers, spec.allocation(), metric, mode), {}

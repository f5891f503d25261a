"""Search algorithms: seeded Optuna (TPE, Gaussian-process BO, multi-objective TPE, random) or a full grid.

Every technique is searched by its own Optuna study, with its own trial budget (``TechniqueSearch``,
budgets from ``SweepSpec.allocation``), so that what TPE learns about LoRA never decides how often
AdamQ3R is tried. ``StudySearch`` is a Ray ``Searcher`` over one study, through Optuna's ask-and-tell
interface: ``study.ask()`` and the technique's define-by-run space (``OptunaSpace``) give a trial's
configuration; its results are reported to the Optuna trial; ``study.tell`` ends it. A trial stopped by
ASHA is told PRUNED (its last reported value stays its intermediate value), not COMPLETE with its score
at the rung, which would teach the sampler that a trial cut at 10 epochs is as good as its score there;
a diverged trial is told the worst objective, so that the sampler learns to avoid its region.
A new study is first given the spec's ``searcher.start_points`` of its technique (``study.enqueue_trial``),
so that knowledge such as the paper's settings is tried before the sampler's own start-up.
"""
from __future__ import annotations

import logging
import math
import pickle
import warnings
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import BasicVariantGenerator, Searcher

from tuning.spec.space import OptunaSpace, grid_points
from tuning.spec.sweep import SweepSpec
from tuning.sweep.trainable import DIVERGED_OBJECTIVE

logger = logging.getLogger(__name__)


class PickledState:
    """Ray's Searcher save/restore (a resumed sweep continues each study) as the pickled ``__dict__``."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class StudySearch(PickledState, Searcher):
    """One technique's Optuna study as a Ray searcher (see the module docstring).

    ``study`` is the ``optuna.Study`` (``study_name`` in ``storage``, in memory without one; an existing
    study of that name is continued); ``trials`` maps Ray trial ids to the Optuna trials asked for them.
    ``metric`` is the objective's name, or a list of names with ``mode`` a list (multi-objective; no
    intermediate values are reported then). ``max_t``: a trial that ends before it, still running, was
    stopped by the scheduler."""

    def __init__(self, space: OptunaSpace, metric, mode, sampler: optuna.samplers.BaseSampler, *, max_t: int,
                 study_name: str, storage: Optional[optuna.storages.BaseStorage] = None,
                 start_points: tuple = ()):
        super().__init__(metric=metric, mode=mode)
        self.space, self.max_t = space, max_t
        modes = mode if isinstance(mode, list) else [mode]
        directions = ["minimize" if m == "min" else "maximize" for m in modes]
        self.study = optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
                                         study_name=study_name, load_if_exists=True, directions=directions)
        if not self.study.trials:                          # a continued study has asked for them already
            technique = next(iter(space.spaces))
            for point in start_points:
                self.study.enqueue_trial({f"{technique}.{p}": v for p, v in point.items()})
        self.trials: dict[str, optuna.Trial] = {}
        self.finished: set[str] = set()

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def suggest(self, trial_id: str) -> dict:
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        trial = self.trials[trial_id]
        constants = self.space(trial)                      # suggests the technique's parameters on the trial
        return {**trial.params, **constants}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self.finished or trial_id not in self.trials:
            return                                         # Optuna keeps no intermediate values of several objectives
        self.trials[trial_id].report(result[self.metric], result["training_iteration"])

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self.finished or trial_id not in self.trials:
            return
        trial, status = self.trials[trial_id], (result or {}).get("status")
        if not error and status == "diverged":       # the worst value: 0 for accuracy, +inf for a min metric
            modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(self.metrics)
            values = [DIVERGED_OBJECTIVE if m == "max" else math.inf for m in modes]
            self.study.tell(trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        elif not error and status == "running" and result.get("epoch", 0) < self.max_t:   # stopped by the scheduler
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            values = [result.get(m) for m in self.metrics] if result else None
            values = values if values is None or isinstance(self.metric, list) else values[0]
            state = TrialState.COMPLETE if values is not None else TrialState.FAIL if error else TrialState.PRUNED
            try:
                self.study.tell(trial, values, state=state)
            except Exception as e:                         # e.g. a NaN objective (Optuna says why)
                logger.warning("Optuna could not record trial %s: %s", trial_id, e)
        self.finished.add(trial_id)


class TechniqueSearch(PickledState, Searcher):
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


def make_sampler(kind: str, seed: int, n_startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "gp":                                   # GP-based BO: meant for small budgets
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
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
        # trials on several workers reserve no CPU in Tune (their trainers do): max_concurrent alone limits them
        limit = {"max_concurrent": spec.max_concurrent} if spec.resources.workers > 1 else {}
        return BasicVariantGenerator(random_state=spec.seed, **limit), {"point": tune.grid_search(grid_points(spec.spaces))}
    metrics = spec.objective_metrics()
    direction = spec.score.mode                # the metric's: max (accuracy) or min (a loss)
    metric, mode = (metrics, [direction] * len(metrics)) if kind == "multi" else ("objective", direction)
    rdb = optuna.storages.RDBStorage(storage) if storage else None
    searchers = {}
    for i, (technique, space) in enumerate(spec.spaces.items()):
        seed = spec.seed + 1000 * i                 # independent, reproducible sampler streams
        searchers[technique] = StudySearch(
            OptunaSpace({technique: space}), metric, mode, make_sampler(kind, seed, spec.searcher.n_startup_trials),
            max_t=spec.max_t, study_name=f"{spec.experiment_name}/{technique}", storage=rdb,
            start_points=tuple(spec.searcher.start_points.get(technique, ())))
    return TechniqueSearch(searchers, spec.allocation(), metric, mode), {}

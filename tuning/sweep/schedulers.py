"""ASHA with its rungs keyed by technique: a trial is judged only against trials of its own technique.

Q3R trials pay for the regularizer early (lower accuracy at epoch 10) and earn it at truncation late;
a rung shared with AdamW or LoRA would stop them for the wrong reason. ``TechniqueASHA`` keeps one
``ASHAScheduler`` per technique (created when the technique's first trial arrives) and forwards each
trial's events to its technique's scheduler. ``min_samples`` keeps a rung from stopping trials until
that many trials of the technique have been recorded there, so that the first trials of a technique
are not judged against a single other run.
"""
from __future__ import annotations

from typing import Optional

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.schedulers.async_hyperband import _Bracket   # ASHA's rung bookkeeping (one bracket here)

from tuning.spec.space import split_config


class _MinSamplesBracket(_Bracket):
    """A rung cutoff (the (1 - 1/rf) quantile of the rung) only once ``min_samples`` trials are recorded."""

    def __init__(self, *args, min_samples: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_samples = min_samples

    def cutoff(self, recorded):
        return None if len(recorded) < self.min_samples else super().cutoff(recorded)


class _MinSamplesASHA(ASHAScheduler):
    """ASHA (one bracket) whose rungs stop nothing before ``min_samples`` trials were recorded there."""

    def __init__(self, *, min_samples: int = 1, grace_period: int, max_t: int, reduction_factor: float, **kwargs):
        super().__init__(grace_period=grace_period, max_t=max_t, reduction_factor=reduction_factor, **kwargs)
        self._brackets = [_MinSamplesBracket(grace_period, max_t, reduction_factor, 0, min_samples=min_samples)]


class TechniqueASHA(FIFOScheduler):
    """One ASHA per technique (see the module docstring); picklable, so a resumed sweep keeps its rungs."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, min_samples: int = 1):
        super().__init__()
        self.options = dict(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                            reduction_factor=reduction_factor, min_samples=min_samples)
        self.by_technique: dict[str, ASHAScheduler] = {}

    def scheduler_of(self, trial) -> ASHAScheduler:
        technique, _ = split_config(trial.config)
        if technique not in self.by_technique:
            self.by_technique[technique] = _MinSamplesASHA(**self.options)
        return self.by_technique[technique]

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        return True                       # metric and mode are given at construction

    def on_trial_add(self, tune_controller, trial) -> None:
        self.scheduler_of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.scheduler_of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.scheduler_of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.scheduler_of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{t}: {s.debug_string()}" for t, s in self.by_technique.items()) or "TechniqueASHA"

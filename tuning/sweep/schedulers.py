"""ASHA with its rungs keyed by technique: a trial is judged only against trials of its own technique.

Q3R trials pay for the regularizer early (lower accuracy at epoch 10) and earn it at truncation late;
a rung shared with AdamW or LoRA would stop them for the wrong reason. ``TechniqueASHA`` keeps one set
of rungs per technique (created when the technique's first trial arrives) and judges each result on
its technique's rungs. ``min_samples`` keeps a rung from stopping trials until that many trials of the
technique have been recorded there, so that the first trials of a technique are not judged against a
single other run.

The rungs follow Ray's ``ASHAScheduler`` with one bracket (``tests/tuning/test_schedulers.py`` checks
the decisions against it): milestones ``grace_period * reduction_factor**k`` up to ``max_t``; a result
at ``time_attr >= max_t`` stops the trial; otherwise the result is recorded at the highest milestone it
has reached and not yet been recorded at, and stops the trial if its value is below that rung's cutoff,
the ``1 - 1/reduction_factor`` quantile (``numpy.nanpercentile``) of the values recorded there before
it. ``mode="min"`` negates the values; a value equal to the cutoff continues.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.spec.space import split_config

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class TechniqueRungs:
    """One technique's rungs: ``[(milestone, {trial_id: signed value})]``, highest milestone first."""

    def __init__(self, grace_period: float, max_t: float, reduction_factor: float, min_samples: int = 1):
        self.reduction_factor, self.min_samples = reduction_factor, min_samples
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)   # as Ray counts them
        self.rungs: list[tuple[float, dict]] = [(grace_period * reduction_factor ** k, {})
                                                for k in reversed(range(count))]

    def cutoff(self, recorded: dict) -> Optional[float]:
        """The value a trial must reach at a rung holding ``recorded``; None: the rung stops nothing yet."""
        if not recorded or len(recorded) < self.min_samples:
            return None
        return np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100)

    def on_result(self, trial_id: str, time: float, value: float) -> str:
        """Record ``value`` (larger is better) at the highest rung reached and not yet recorded; STOP if
        it falls below the rung's cutoff."""
        for milestone, recorded in self.rungs:
            if time < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[trial_id] = value
            return STOP if cutoff is not None and value < cutoff else CONTINUE
        return CONTINUE

    def describe(self) -> str:
        return " | ".join(f"{milestone:g}: {len(recorded)} recorded, cutoff {self.cutoff(recorded)}"
                          for milestone, recorded in reversed(self.rungs))


class TechniqueASHA(FIFOScheduler):
    """ASHA with one set of rungs per technique (see the module docstring); picklable, so a resumed sweep
    keeps its rungs."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, min_samples: int = 1):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', but got {mode=}")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"ASHA needs 0 < grace_period <= max_t, but got {grace_period=}, {max_t=}")
        if not reduction_factor > 1:
            raise ValueError(f"ASHA needs reduction_factor > 1, but got {reduction_factor=}")
        if not min_samples >= 1:
            raise ValueError(f"ASHA needs min_samples >= 1, but got {min_samples=}")
        super().__init__()
        self.options = dict(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                            reduction_factor=reduction_factor, min_samples=min_samples)
        self.time_attr, self.metric_name, self.max_t = time_attr, metric, max_t
        self.sign = 1.0 if mode == "max" else -1.0
        self.by_technique: dict[str, TechniqueRungs] = {}
        self.num_stopped = 0

    def rungs_of(self, trial) -> TechniqueRungs:
        technique, _ = split_config(trial.config)
        if technique not in self.by_technique:
            o = self.options
            self.by_technique[technique] = TechniqueRungs(o["grace_period"], o["max_t"], o["reduction_factor"],
                                                          o["min_samples"])
        return self.by_technique[technique]

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        return True                       # metric and mode are given at construction

    def on_trial_add(self, tune_controller, trial) -> None:
        self.rungs_of(trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.time_attr not in result or self.metric_name not in result:
            return CONTINUE
        if result[self.time_attr] >= self.max_t:
            action = STOP                 # finished its budget
        else:
            action = self.rungs_of(trial).on_result(trial.trial_id, result[self.time_attr],
                                                    self.sign * result[self.metric_name])
        self.num_stopped += action == STOP
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if self.time_attr in result and self.metric_name in result:
            self.rungs_of(trial).on_result(trial.trial_id, result[self.time_attr], self.sign * result[self.metric_name])

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass                              # what it recorded stays on its rungs, as in Ray's ASHA

    def debug_string(self) -> str:
        lines = [f"TechniqueASHA: num_stopped={self.num_stopped}"]
        return "\n".join(lines + [f"  {t}: {r.describe()}" for t, r in self.by_technique.items()])

"""What the terminal shows while a sweep runs: one progress line per technique, instead of Ray's tables.

``Progress`` is a Ray Tune callback (it runs on the driver) that prints, at most every ``every`` seconds and
when a trial ends, a block like::

    [3:12 elapsed, about 2:40 left] 9 of 18 trials done
      adamq3r   3 done, 1 running, 1 stopped, 0 failed   best objective 0.9111
      adamw     2 done, 1 running, 0 stopped, 0 failed   best objective 0.8972

"Left" is the elapsed time scaled by the epochs still to run (every trial not yet ended counted at the
spec's full epochs, so ASHA's stops make it shrink faster than it grows). Ray's own status tables
go to ``TableLog``'s file (the sweep's ``progress.log``) instead of the terminal.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

from ray import tune

from tuning.spec.space import split_config
from tuning.trial.metrics import Metric

ENDED = ("done", "stopped", "failed")
PROGRESS_LOG = "progress.log"       # in the Tuner's folder: Ray's status tables


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _technique(config: dict) -> str:
    try:
        return split_config(config)[0]
    except (ValueError, KeyError, TypeError):
        return "?"


class Progress(tune.Callback):
    """Per-technique progress lines on the driver (``log``: where they go, ``print`` by default);
    ``total``: the trials the search will run, ``max_t``: each trial's epochs, ``mode``: the objective's."""

    def __init__(self, total: int, max_t: int, mode: str = "max", every: float = 20.0,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.total, self.max_t, self.mode, self.every, self.log, self.clock = total, max_t, mode, every, log, clock
        self.start: Optional[float] = None
        self.last = -math.inf
        self.state: dict[str, str] = {}           # trial id -> running / done / stopped / failed
        self.epoch: dict[str, int] = {}
        self.technique: dict[str, str] = {}
        self.best: dict[str, float] = {}          # technique -> best objective reported so far

    def __getstate__(self):                    # Ray saves its callbacks with the experiment's state:
        state = dict(self.__dict__)            # the printer and the clock stay behind (restored: print, monotonic)
        state.pop("log"), state.pop("clock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, log=print, clock=time.monotonic)

    # --- what Tune tells us ------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._seen(trial)
        self.state[trial.trial_id] = "running"
        self._maybe_show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._seen(trial)
        self.epoch[trial.trial_id] = int(result.get("epoch", self.epoch.get(trial.trial_id, 0)))
        value = result.get("objective")
        if isinstance(value, (int, float)) and math.isfinite(value):
            tech = self.technique[trial.trial_id]
            old = self.best.get(tech)
            if old is None or (value > old if self.mode == "max" else value < old):
                self.best[tech] = float(value)
        self._maybe_show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._seen(trial)
        stopped = self.epoch.get(trial.trial_id, self.max_t) < self.max_t
        self.state[trial.trial_id] = "stopped" if stopped else "done"
        self._maybe_show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._seen(trial)
        self.state[trial.trial_id] = "failed"
        self._maybe_show(force=True)

    def on_experiment_end(self, trials, **info):
        self._maybe_show(force=True)

    # --- what we show ------------------------------------------------------------------------------------
    def _seen(self, trial) -> None:
        if self.start is None:
            self.start = self.clock()
        if trial.trial_id not in self.technique:
            self.technique[trial.trial_id] = _technique(trial.config)

    def _maybe_show(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            for line in self.lines(now):
                self.log(line)

    def left(self, elapsed: float) -> Optional[float]:
        """Seconds still to run, estimated from the epochs run so far; None before the first epoch."""
        run = sum(self.epoch.values())
        if run == 0:
            return None
        ended = [t for t, s in self.state.items() if s in ENDED]
        to_run = sum(self.max_t - self.epoch.get(t, 0) for t, s in self.state.items() if s == "running")
        to_run += max(self.total - len(self.state), 0) * self.max_t
        return elapsed * to_run / run if ended or to_run else 0.0

    def lines(self, now: Optional[float] = None) -> list[str]:
        now = self.clock() if now is None else now
        elapsed = now - (self.start if self.start is not None else now)
        left = self.left(elapsed)
        ended = sum(1 for s in self.state.values() if s in ENDED)
        head = f"[{_clock(elapsed)} elapsed" + (f", about {_clock(left)} left" if left is not None else "") + \
            f"] {ended} of {max(self.total, len(self.state))} trials ended"
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("running", *ENDED), 0))
        for trial, state in self.state.items():
            counts[self.technique[trial]][state] += 1
        width = max((len(t) for t in counts), default=0)
        out = [head]
        for tech in sorted(counts):
            c = counts[tech]
            best = self.best.get(tech)
            out.append(f"  {tech:<{width}}  {c['done']} done, {c['running']} running, {c['stopped']} stopped, "
                       f"{c['failed']} failed" + (f"   best objective {best:.4f}" if best is not None else ""))
        return out


class TableLog(tune.CLIReporter):
    """Ray's status table, written to ``path`` (appended) instead of the terminal."""

    def __init__(self, path: Path, metric: Metric):
        super().__init__(metric_columns={"epoch": "epoch", "objective": "objective", metric.key: metric.key},
                         parameter_columns={"technique": "technique"}, max_report_frequency=30,
                         max_progress_rows=30, sort_by_metric=False, print_intermediate_tables=True)
        self.path = Path(path)

    def report(self, trials, done, *sys_info):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f, contextlib.redirect_stdout(f):
            super().report(trials, done, *sys_info)

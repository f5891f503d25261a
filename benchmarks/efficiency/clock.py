"""A simulated clock for the replay: trials report in the order of their recorded times, not of Ray's latencies.

A replayed trial of the table would report at once; what the scheduler must see is the order a real run
makes: with ``slots`` trials at a time, a trial that starts when another ended starts at that trial's end
time and reports epoch k at its start plus its first k recorded epoch times. ``SimClock`` (a Ray actor)
releases a trial's next report only when no other running trial has an earlier one still to make, and,
while a slot is free and the search has trials left to start, only once the new trial has started (its
first report may come before). The driver tells the clock when a trial ended (``Events`` callback), so a
trial stopped by ASHA frees its slot at the time of the report that stopped it. A fallback of ``patience``
real seconds keeps a lost start from blocking the replay.
"""
from __future__ import annotations

import asyncio
import time

import ray


@ray.remote(num_cpus=0)
class SimClock:
    def __init__(self, slots: int, total: int, patience: float = 30.0):
        self.free = [0.0] * slots           # simulated times at which a slot became free, not yet taken
        self.freed_at = time.monotonic()
        self.total, self.started, self.patience = total, 0, patience
        self.posted: dict[str, float] = {}  # running trial -> the time of its next report (or of its last)
        self.released: dict[str, float] = {}  # running trial -> the time of its last report let through
        self.starts: dict[str, float] = {}
        self.tries: dict[str, int] = {}     # configuration -> trials of it that asked for their ``occurrence``
        self.occurrences: dict[str, int] = {}
        self.cond = None

    def _condition(self) -> asyncio.Condition:
        if self.cond is None:
            self.cond = asyncio.Condition()
        return self.cond

    async def start(self, trial_id: str) -> float:
        """The simulated time the trial starts: when the earliest free slot was freed."""
        async with self._condition():
            waited = time.monotonic()
            while not self.free and time.monotonic() - waited < self.patience:   # the driver tells done() first,
                try:                                                            # usually; never start early
                    await asyncio.wait_for(self.cond.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
            if trial_id not in self.starts:
                self.free.sort()
                self.starts[trial_id] = self.free.pop(0) if self.free else max(self.posted.values(), default=0.0)
                self.started += 1
                self.posted[trial_id] = self.released[trial_id] = self.starts[trial_id]
                self.cond.notify_all()
            return self.starts[trial_id]

    async def occurrence(self, trial_id: str, key: str) -> int:
        """How many trials of configuration ``key`` asked before this one (0 for the first): the replay's
        ``k``-th try of a configuration meets the seed curve drawn for (replay seed, k, configuration)."""
        if trial_id not in self.occurrences:
            self.occurrences[trial_id] = self.tries.get(key, 0)
            self.tries[key] = self.occurrences[trial_id] + 1
        return self.occurrences[trial_id]

    def _ready(self, trial_id: str, t: float) -> bool:
        if any(other < t for o, other in self.posted.items() if o != trial_id):
            return False
        waiting_for_start = self.free and self.started < self.total and min(self.free) < t
        return not waiting_for_start or time.monotonic() - self.freed_at > self.patience

    async def wait(self, trial_id: str, t: float) -> None:
        """Block until the trial's report at simulated time ``t`` is the next one of the run."""
        async with self._condition():
            self.posted[trial_id] = t
            self.cond.notify_all()
            while not self._ready(trial_id, t):
                try:
                    await asyncio.wait_for(self.cond.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
            self.released[trial_id] = t

    async def done(self, trial_id: str) -> None:
        """The trial ended (completed, stopped or failed): its slot is free from its last report's time."""
        async with self._condition():
            if trial_id in self.posted:
                self.posted.pop(trial_id)
                self.free.append(self.released.pop(trial_id))
                self.freed_at = time.monotonic()
                self.cond.notify_all()

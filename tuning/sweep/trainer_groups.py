"""Give back the placement group of a trainer whose trial Tune ended (ASHA's stop, a trial that failed).

When Tune stops a trial of ``resources.workers`` > 1, it ends the trial's actor; the Ray Train controller
that actor owns dies with it, and so do the workers, but the workers' placement group is scoped to the job
(Ray's default lifetime), not to its creator: it stays reserved, and the next trial's trainer waits for
those resources forever. Ray Train 2.60 starts a detached cleaner for that case, but the cleaner asks the
Ray State API whether the controller lives, and the State API needs the dashboard, which a local Ray
started without it (or a Ray without ``ray[default]``, as here) lacks: it retries forever.

``TrainerGroups`` does the same with public calls only. One actor per sweep (no CPU, owned by the driver):
each trial's Tune function hands it its own actor (``watch``), and the trainer's rank-0 worker the
placement group it runs in (``register``, from ``ray.util.get_current_placement_group``). The keeper asks
every watched actor to answer (``__ray_ready__``, queued behind its running call); when the answer is
that the actor died, it removes the trial's placement groups that are still there, and any that the dying
controller registers after.
"""
from __future__ import annotations

import threading
import time

import ray
from ray.exceptions import RayActorError
from ray.util import placement_group_table, remove_placement_group

PROBE_S = 1.0                   # seconds between two probes of one watched actor


def removed(group) -> bool:
    table = placement_group_table(group)
    return not table or table.get("state") == "REMOVED"


@ray.remote(num_cpus=0, max_concurrency=4)
class TrainerGroups:
    """Per trial attempt (its Tune actor's id): the Tune actor, and the trainers' placement groups."""

    def __init__(self):
        self.lock = threading.Lock()
        self.actors: dict = {}              # attempt -> the trial's Tune actor, while it lives
        self.groups: dict = {}              # attempt -> placement groups registered
        self.dead: set = set()              # attempts whose Tune actor died
        self.released = 0                   # placement groups this keeper removed
        threading.Thread(target=self.monitor, daemon=True).start()

    def watch(self, attempt: str, actor) -> None:
        with self.lock:
            self.actors[attempt] = actor

    def register(self, attempt: str, group) -> None:
        with self.lock:
            self.groups.setdefault(attempt, []).append(group)
            late = attempt in self.dead
        if late:                            # a controller that outlived its trial for a moment
            self.release(attempt)

    def released_count(self) -> int:
        return self.released

    def release(self, attempt: str) -> None:
        with self.lock:
            groups, self.groups[attempt] = self.groups.get(attempt, []), []
        for group in groups:
            if not removed(group):
                remove_placement_group(group)
                self.released += 1

    def monitor(self) -> None:
        probes: dict = {}                   # probe ref -> attempt
        while True:
            with self.lock:
                waiting = set(probes.values())
                for attempt, actor in self.actors.items():
                    if attempt not in waiting:
                        probes[actor.__ray_ready__.remote()] = attempt
            if not probes:
                time.sleep(PROBE_S)
                continue
            done, _ = ray.wait(list(probes), num_returns=len(probes), timeout=PROBE_S)
            for ref in done:
                attempt = probes.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError:
                    with self.lock:
                        self.actors.pop(attempt, None)
                        self.dead.add(attempt)
                    self.release(attempt)
            if done:
                time.sleep(PROBE_S)

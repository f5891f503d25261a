"""``TrainerGroups`` with a real Ray (no dashboard, as the sweep's): a trial actor's placement groups are
removed when that actor dies, and only then; one registered after its death is removed at once.
The sweep that needs it (ASHA with two workers): tests/tuning/test_sweep_workers.py."""
from __future__ import annotations

import time

import pytest

from tuning.sweep.trainer_groups import removed


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
def test_the_placement_groups_of_a_dead_trial_actor_are_removed_and_no_others(ray_session):
    ray = ray_session
    from ray.util import placement_group

    from tuning.sweep.trainer_groups import TrainerGroups

    @ray.remote(num_cpus=0)
    class Trial:                                     # stands for a trial's Tune actor, busy in a long call
        def attempt(self) -> str:
            return ray.get_runtime_context().get_actor_id()

        def train(self, seconds: float) -> None:
            time.sleep(seconds)

    keeper = TrainerGroups.remote()
    trials = [Trial.remote() for _ in range(2)]
    attempts = ray.get([t.attempt.remote() for t in trials])
    groups = [placement_group([{"CPU": 0.5}]) for _ in trials]
    ray.get([g.ready() for g in groups])
    for trial, attempt, group in zip(trials, attempts, groups):
        ray.get(keeper.watch.remote(attempt, trial))
        ray.get(keeper.register.remote(attempt, group))
        trial.train.remote(600)
    time.sleep(3)                                     # several probes: both actors live, nothing removed
    assert not removed(groups[0]) and not removed(groups[1])

    ray.kill(trials[0])
    assert wait_until(lambda: removed(groups[0])), "the dead trial's placement group is still reserved"
    assert not removed(groups[1]) and ray.get(keeper.released_count.remote()) == 1

    late = placement_group([{"CPU": 0.5}])            # its controller's last act: a new worker group
    ray.get(late.ready())
    ray.get(keeper.register.remote(attempts[0], late))
    assert removed(late) and ray.get(keeper.released_count.remote()) == 2

    ray.kill(trials[1])
    assert wait_until(lambda: removed(groups[1]))
    ray.kill(keeper)
    assert wait_until(lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"])

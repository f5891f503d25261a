"""ASHA keyed by technique: a trial is judged only against trials of its own technique. Ray's own
``ASHAScheduler`` (one bracket) is the reference for the rung decisions."""
import pickle
import random
import warnings
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuning.sweep.schedulers import TechniqueASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def trial(tid: str, technique: str):
    return SimpleNamespace(trial_id=tid, config={"technique": technique, f"{technique}.lr": 1e-3})


def asha(**kw) -> TechniqueASHA:
    options = dict(time_attr="epoch", metric="objective", mode="max", max_t=27, grace_period=3, reduction_factor=3)
    return TechniqueASHA(**{**options, **kw})


def report(s: TechniqueASHA, t, epoch: int, objective: float) -> str:
    return s.on_trial_result(None, t, {"epoch": epoch, "objective": objective})


def test_a_weak_technique_is_not_judged_against_a_strong_one():
    s = asha()
    strong = [trial(f"w{i}", "adamw") for i in range(3)]
    for t in strong:
        s.on_trial_add(None, t)
    assert [report(s, t, 3, 0.9 + 0.01 * i) for i, t in enumerate(strong)] == [CONTINUE] * 3
    slow = trial("q0", "adamq3r")                  # far below every adamw trial at the rung
    s.on_trial_add(None, slow)
    assert report(s, slow, 3, 0.3) == CONTINUE     # the first of its technique at the rung
    weaker = trial("q1", "adamq3r")
    s.on_trial_add(None, weaker)
    assert report(s, weaker, 3, 0.2) == STOP       # judged against adamq3r's q0 only
    assert set(s.by_technique) == {"adamw", "adamq3r"}


def test_one_shared_asha_would_have_stopped_it():
    """The same events through one rung for every technique stop the slow Q3R trial (what the keyed rungs avoid)."""
    s = asha()
    for i in range(3):
        t = trial(f"w{i}", "technique")
        s.on_trial_add(None, t)
        report(s, t, 3, 0.9 + 0.01 * i)
    slow = trial("q0", "technique")
    s.on_trial_add(None, slow)
    assert report(s, slow, 3, 0.3) == STOP


def test_min_samples_keeps_the_first_trials_of_a_technique():
    s = asha(min_samples=2)
    first, second, third = (trial(f"q{i}", "adamq3r") for i in range(3))
    for t in (first, second, third):
        s.on_trial_add(None, t)
    assert report(s, first, 3, 0.9) == CONTINUE
    assert report(s, second, 3, 0.1) == CONTINUE   # only one trial recorded at the rung before it: no cutoff
    assert report(s, third, 3, 0.1) == STOP        # two recorded: the cutoff applies
    assert report(s, first, 27, 0.95) == STOP      # max_t reached: stopped as finished


def test_the_rungs_survive_pickling_as_in_a_resumed_sweep():
    s = asha(min_samples=2)
    a, b = trial("q0", "adamq3r"), trial("q1", "adamq3r")
    s.on_trial_add(None, a)
    s.on_trial_add(None, b)
    report(s, a, 3, 0.9)
    report(s, b, 3, 0.8)
    again = pickle.loads(pickle.dumps(s))
    c = trial("q2", "adamq3r")
    again.on_trial_add(None, c)
    assert report(again, c, 3, 0.5) == STOP


# ---- Ray's ASHAScheduler as the reference ---------------------------------------------------------
def result_stream(seed: int, techniques=("adamw",), trials: int = 24, max_t: int = 27):
    """A random interleaving of trials' results, as Tune would deliver them: (trial, result, last).
    Epochs advance by 1 to 4 (some results skip a milestone), values come from a few levels (ties)
    with the odd NaN, and a trial may end before max_t (``last``: Tune calls on_trial_complete)."""
    rng = random.Random(seed)
    pending = [trial(f"t{i}", rng.choice(techniques)) for i in range(trials)]
    ends = {t.trial_id: rng.choice([max_t, max_t, rng.randint(1, max_t)]) for t in pending}
    epoch = {t.trial_id: 0 for t in pending}
    running, events = [], []
    while pending or running:
        if pending and (not running or rng.random() < 0.3):
            running.append(pending.pop(0))
            events.append(("add", running[-1], None))
            continue
        t = rng.choice(running)
        epoch[t.trial_id] = min(ends[t.trial_id], epoch[t.trial_id] + rng.randint(1, 4))
        value = float("nan") if rng.random() < 0.03 else rng.choice([0.1, 0.2, 0.3, 0.5, 0.5, 0.8, 0.9])
        events.append(("result", t, {"epoch": epoch[t.trial_id], "objective": value}))
        if epoch[t.trial_id] == ends[t.trial_id]:
            running.remove(t)
    return events


def decisions(scheduler_of, events) -> list:
    """Feed the events to the scheduler(s) as Tune would; a stopped or finished trial is completed."""
    out, stopped = [], set()
    last = {t.trial_id: r for kind, t, r in events if kind == "result"}       # each trial's final result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # nanpercentile of an all-NaN rung
        for kind, t, result in events:
            s = scheduler_of(t)
            if kind == "add":
                s.on_trial_add(None, t)
                continue
            if t.trial_id in stopped:
                continue
            action = s.on_trial_result(None, t, result)
            out.append((t.trial_id, result["epoch"], action))
            if action == STOP or result is last[t.trial_id]:
                stopped.add(t.trial_id)
                s.on_trial_complete(None, t, result)
    return out


SETTINGS = [dict(max_t=27, grace_period=3, reduction_factor=3), dict(max_t=27, grace_period=1, reduction_factor=2),
            dict(max_t=20, grace_period=2, reduction_factor=2.5), dict(max_t=16, grace_period=1, reduction_factor=4)]


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{v:g}" for v in s.values()))
def test_the_decisions_are_those_of_rays_asha_with_one_bracket(settings, mode):
    for seed in range(4):
        events = result_stream(seed, max_t=settings["max_t"])
        ours = TechniqueASHA(time_attr="epoch", metric="objective", mode=mode, min_samples=1, **settings)
        ray_asha = ASHAScheduler(time_attr="epoch", metric="objective", mode=mode, brackets=1, **settings)
        mine, theirs = decisions(lambda t: ours, events), decisions(lambda t: ray_asha, events)
        assert mine == theirs
        assert 0 < sum(a == STOP for *_, a in mine) < len(mine)             # the stream exercised both


def test_each_technique_decides_as_its_own_rays_asha():
    settings = dict(max_t=27, grace_period=1, reduction_factor=3)
    events = result_stream(7, techniques=("adamw", "adamq3r", "lora"), trials=36)
    ours = asha(**settings)
    references = {t: ASHAScheduler(time_attr="epoch", metric="objective", mode="max", brackets=1, **settings)
                  for t in ("adamw", "adamq3r", "lora")}
    assert decisions(lambda t: ours, events) == decisions(lambda t: references[t.config["technique"]], events)
    shared = ASHAScheduler(time_attr="epoch", metric="objective", mode="max", brackets=1, **settings)
    assert decisions(lambda t: ours, events) != decisions(lambda t: shared, events)   # the keying matters here


def test_min_samples_waits_for_that_many_recorded_trials_at_every_rung():
    s = asha(min_samples=3, grace_period=1, reduction_factor=2, max_t=8)
    ts = [trial(f"q{i}", "adamq3r") for i in range(5)]
    for t in ts:
        s.on_trial_add(None, t)
    # rung 1: 0.9, 0.8, 0.1 -> the third is judged against two: no cutoff yet; the fourth against three
    assert [report(s, t, 1, v) for t, v in zip(ts, (0.9, 0.8, 0.1, 0.2))] == [CONTINUE, CONTINUE, CONTINUE, STOP]
    # rung 2 (milestone 2): empty so far, so even a poor value continues until three are recorded there
    assert [report(s, t, 2, v) for t, v in zip(ts[:3], (0.1, 0.2, 0.3))] == [CONTINUE] * 3
    assert report(s, ts[4], 2, 0.15) == STOP         # first seen at epoch 2: judged at rung 2, three recorded
    with pytest.raises(ValueError, match=r"min_samples >= 1, but got min_samples=0"):
        asha(min_samples=0)

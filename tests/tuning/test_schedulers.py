"""ASHA keyed by technique: a trial is judged only against trials of its own technique."""
import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

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

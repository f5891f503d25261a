"""The live progress lines of a sweep (``tuning.sweep.progress``), fed the calls Ray Tune makes on the driver."""
from __future__ import annotations

from types import SimpleNamespace

from tuning.sweep.progress import Progress


def trial(tid: str, technique: str):
    return SimpleNamespace(trial_id=tid, config={"point": {"technique": technique, "lr": 0.01}})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_count_trials_by_technique_with_the_best_objective_and_what_is_left():
    clock, lines = Clock(), []
    p = Progress(total=4, max_t=4, mode="max", every=1e9, log=lines.append, clock=clock)
    a, b, c = trial("a", "adamq3r"), trial("b", "adamw"), trial("c", "adamq3r")
    for t in (a, b):
        p.on_trial_start(0, [], t)
    assert lines[0] == "[0:00 elapsed] 0 of 4 trials ended"          # the first call shows; no estimate yet
    lines.clear()
    clock.now = 10.0
    for epoch, value in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)):
        p.on_trial_result(0, [], a, {"epoch": epoch, "objective": value})
    p.on_trial_result(0, [], b, {"epoch": 1, "objective": 0.4})
    p.on_trial_complete(0, [], a)                                        # all 4 epochs: done
    clock.now = 20.0
    p.on_trial_start(0, [], c)
    p.on_trial_result(0, [], c, {"epoch": 1, "objective": 0.9})
    p.on_trial_complete(0, [], c)                                        # 1 of 4 epochs: ASHA stopped it
    p.on_trial_complete(0, [], b)                                        # b too, at epoch 1
    # 6 epochs run in 20 s; left: 1 trial not started (4 epochs) -> 20 * 4 / 6 = 13.3 s
    assert lines[-3:] == ["[0:20 elapsed, about 0:13 left] 3 of 4 trials ended",
                          "  adamq3r  1 done, 0 running, 1 stopped, 0 failed   best objective 0.9000",
                          "  adamw    0 done, 0 running, 1 stopped, 0 failed   best objective 0.4000"]


def test_a_min_objective_keeps_the_lowest_and_failures_are_counted():
    lines = []
    p = Progress(total=2, max_t=2, mode="min", every=1e9, log=lines.append, clock=Clock())
    a, b = trial("a", "lora"), trial("b", "lora")
    p.on_trial_start(0, [], a)
    p.on_trial_result(0, [], a, {"epoch": 1, "objective": 0.3})
    p.on_trial_result(0, [], a, {"epoch": 2, "objective": 0.2})
    p.on_trial_result(0, [], a, {"epoch": 2, "objective": float("nan")})   # a diverged report is not a best
    p.on_trial_complete(0, [], a)
    p.on_trial_start(0, [], b)
    p.on_trial_error(0, [], b)
    assert lines[-1] == "  lora  1 done, 0 running, 0 stopped, 1 failed   best objective 0.2000"
    assert lines[-2].endswith("2 of 2 trials ended") and "0:00 left" in lines[-2]


def test_lines_are_throttled_except_when_a_trial_ends():
    clock, lines = Clock(), []
    p = Progress(total=3, max_t=3, every=20.0, log=lines.append, clock=clock)
    a = trial("a", "adamw")
    p.on_trial_start(0, [], a)
    shown = len(lines)
    clock.now = 5.0
    p.on_trial_result(0, [], a, {"epoch": 1, "objective": 0.5})
    assert len(lines) == shown                                            # 5 s after the last: nothing
    clock.now = 25.0
    p.on_trial_result(0, [], a, {"epoch": 2, "objective": 0.6})
    assert len(lines) > shown
    shown = len(lines)
    clock.now = 26.0
    p.on_trial_complete(0, [], a)
    assert len(lines) > shown                                             # an end always shows


def test_it_pickles_without_its_printer_as_ray_saves_callbacks():
    import pickle

    lines = []
    p = Progress(total=1, max_t=1, log=lines.append, clock=Clock())
    p.on_trial_start(0, [], trial("a", "adamw"))
    again = pickle.loads(pickle.dumps(p))
    assert again.log is print and again.state == {"a": "running"} and again.technique == {"a": "adamw"}

"""The Optuna searcher: early-stopped trials are PRUNED, diverged ones get the worst objective."""
import pytest
from optuna.trial import TrialState

from tuning.searcher import make_searcher
from tuning.space import split_config
from tuning.spec import from_dict

from tests.tuning.sweep_helpers import tiny_spec


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_outcomes_reach_the_study_with_the_right_state(kind):
    spec = from_dict(tiny_spec(searcher={"kind": kind}), source="tiny.yaml")
    searcher, space = make_searcher(spec)
    assert space == {}
    configs = {t: searcher.suggest(t) for t in ("a", "b", "c", "d")}
    for config in configs.values():                      # each config is one technique's full parameter set
        technique, params = split_config(config)
        assert set(params) == set(spec.spaces[technique])
    searcher.on_trial_result("a", {"objective": 0.3, "training_iteration": 1, "epoch": 1})
    searcher.on_trial_complete("a", {"objective": 0.3, "epoch": 1, "status": "running"})       # ASHA stopped it
    searcher.on_trial_complete("b", {"epoch": 2, "status": "diverged"})                        # no accuracy
    searcher.on_trial_complete("c", {"objective": 0.71, "epoch": spec.epochs, "status": "completed"})
    searcher.on_trial_complete("d", None, error=True)                                          # raised
    study = searcher._ot_study
    states = {t.number: (t.state, t.value) for t in study.trials}
    assert states == {0: (TrialState.PRUNED, 0.3), 1: (TrialState.COMPLETE, 0.0),
                      2: (TrialState.COMPLETE, 0.71), 3: (TrialState.FAIL, None)}
    assert study.trials[0].intermediate_values == {1: 0.3}     # pruned: its last reported value


def test_multi_objective_values_are_the_retention_accuracies():
    spec = from_dict(tiny_spec(searcher={"kind": "multi"}), source="tiny.yaml")
    searcher, _ = make_searcher(spec)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", {"acc@0.1": 0.4, "acc@0.5": 0.8, "objective": 0.6, "epoch": 4,
                                     "status": "completed"})
    searcher.on_trial_complete("b", {"epoch": 1, "status": "diverged"})
    a, b = searcher._ot_study.trials
    assert a.values == [0.4, 0.8] and b.values == [0.0, 0.0]


def test_grid_is_every_point_once():
    techniques = {"adamw": {"lr": {"choice": [1.0e-3, 2.0e-3, 4.0e-3]}}}
    spec = from_dict(tiny_spec(techniques=techniques, searcher={"kind": "grid"}, scheduler={"kind": "fifo"}),
                     source="tiny.yaml")
    _, space = make_searcher(spec)
    points = space["point"]["grid_search"]
    assert [split_config({"point": p}) for p in points] == [("adamw", {"lr": v}) for v in (1e-3, 2e-3, 4e-3)]

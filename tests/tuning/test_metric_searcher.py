"""A min metric reaches the searcher and the scheduler: Optuna minimizes, ASHA keeps the lowest, a
diverged trial is told the worst value (+inf)."""
import math

from optuna.study import StudyDirection
from optuna.trial import TrialState

from tuning.spec.sweep import from_dict
from tuning.sweep.driver import search_config
from tuning.sweep.searcher import make_searcher
from tuning.spec.space import split_config
from tuning.sweep.trainable import trial_metrics

from tests.tuning.sweep_helpers import tiny_spec


def test_optuna_minimizes_and_a_diverged_trial_is_the_worst():
    spec = from_dict(tiny_spec(metric="val_loss"), source="tiny.yaml")
    searcher, _ = make_searcher(spec)
    techniques = {}
    for trial_id in ("a", "b", "c", "d"):
        techniques[trial_id] = split_config(searcher.suggest(trial_id))[0]
    q3r = [t for t, tech in techniques.items() if tech == "adamq3r"]
    searcher.on_trial_complete(q3r[0], {"objective": 0.9, "epoch": spec.epochs, "status": "completed"})
    searcher.on_trial_complete(q3r[1], {"epoch": 1, "status": "diverged", "objective": math.nan})
    study = searcher.searchers["adamq3r"].study
    assert study.direction == StudyDirection.MINIMIZE
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.9), (TrialState.COMPLETE, math.inf)]
    assert make_searcher(from_dict(tiny_spec(), source="t"))[0].searchers["adamw"].study.direction == \
        StudyDirection.MAXIMIZE


def test_asha_mode_and_the_reported_objective_follow_the_metric():
    spec = from_dict(tiny_spec(metric="val_loss", objective="val_loss@0.5"), source="tiny.yaml")
    config, _ = search_config(spec, None)
    assert config.scheduler.options["mode"] == "min"
    assert search_config(from_dict(tiny_spec(), source="t"), None)[0].scheduler.options["mode"] == "max"
    report = {"epoch": 1, "status": "running", "val_loss@0.5": 0.7, "val_loss@0.1": 1.3, "acc@0.5": 0.4}
    assert trial_metrics(report, spec.objective, spec.retentions, spec.score)["objective"] == 0.7
    assert math.isnan(trial_metrics({"epoch": 1, "status": "diverged"}, spec.objective, spec.retentions,
                                    spec.score)["objective"])

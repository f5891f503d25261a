"""A sweep whose metric is a loss (lower is better): fronts, hypervolume, recommendations and the
confirmation plan on hand-made records, each worked out by hand, and each unlike accuracy's answer."""
import math

import pytest

from tuning.analysis.confirm import candidates
from tuning.analysis.pareto import Point, dominates, front_table, fronts, hypervolume, pareto_front, seed_points
from tuning.analysis.recommend import recommend, recommendation_table
from tuning.analysis.records import COMPLETED, CONFIRMATION, DIVERGED, TrialRecord
from tuning.trial.metrics import DEFAULT_METRIC, Metric, level_key

LOSS = Metric("val_loss", "min")


def make(trial_id, technique, levels, status=COMPLETED, role="trial", confirms=""):
    """levels: {retention: (parameters, targeted, val_loss)}, under the keys a val_loss sweep logs; the
    accuracy keys hold the same numbers, so that reading them as accuracy (higher is better) by mistake
    gives other answers."""
    metrics = {}
    for p, (n, t, loss) in levels.items():
        k = level_key(p)
        metrics.update({f"val_loss@{k}": loss, f"acc@{k}": loss, f"params@{k}": n, f"targeted@{k}": t})
    return TrialRecord(trial_id, technique, {"lr": 1e-3, "seed_of": trial_id}, status, 10, metrics, role=role,
                       confirms=confirms, run_id=f"run-{trial_id}")


# Dense model: 1000 parameters. Points (parameters: loss): a 200: .50, 500: .30, 1000: .25;
#                                                          b 200: .90, 500: .28, 1000: .20.
A = make("a", "adamq3r", {0.2: (200, 0.2, 0.50), 0.5: (500, 0.5, 0.30), 1.0: (1000, 1.0, 0.25)})
B = make("b", "adamw", {0.2: (200, 0.2, 0.90), 0.5: (500, 0.5, 0.28), 1.0: (1000, 1.0, 0.20)})
RECORDS = [A, B]


def pt(parameters, value, trial_id="t"):
    return Point(trial_id, "adamq3r", {}, 0.2, parameters, parameters / 1000, value, "")


def test_dominates_in_the_metrics_direction():
    assert dominates(pt(100, 0.3), pt(200, 0.5), LOSS) and not dominates(pt(200, 0.5), pt(100, 0.3), LOSS)
    assert not dominates(pt(100, 0.3), pt(200, 0.5))                      # as accuracy: 0.3 < 0.5 is worse
    assert not dominates(pt(100, 0.3), pt(100, 0.3), LOSS)


def test_front_keeps_the_lowest_loss_at_each_size():
    result = fronts(RECORDS, metric=LOSS)
    assert [(p.trial_id, p.parameters, p.accuracy) for p in result.overall] == \
        [("a", 200, 0.50), ("b", 500, 0.28), ("b", 1000, 0.20)]
    assert [(p.trial_id, p.retention) for p in fronts(RECORDS).overall] == [("b", 0.2)]     # as accuracy
    assert result.metric == LOSS and result.ref_value == 0.90                # the worst loss observed
    assert fronts(RECORDS).ref_value == 0.0                                  # accuracy: 0, as before


def test_hypervolume_against_the_worst_loss_by_hand():
    result = fronts(RECORDS, metric=LOSS)
    # overall: (0.5 - 0.2) * (0.90 - 0.50) + (1.0 - 0.5) * (0.90 - 0.28) + 0 * (0.90 - 0.20) = 0.12 + 0.31
    assert result.hypervolume == pytest.approx(0.43)
    # a: 0.3 * 0.40 + 0.5 * 0.60 = 0.42; b: 0.3 * 0 + 0.5 * 0.62 = 0.31
    assert result.per_technique_hypervolume == pytest.approx({"adamq3r": 0.42, "adamw": 0.31})
    assert hypervolume([pt(200, 0.5), pt(500, 0.3)], 1000, 0.9, LOSS) == pytest.approx(0.42)
    assert hypervolume([pt(100, 1.2)], 1000, 0.9, LOSS) == 0.0             # worse than the reference
    assert pareto_front([pt(100, 0.4, "x"), pt(100, 0.4, "w"), pt(50, 0.6)], LOSS) == [pt(50, 0.6), pt(100, 0.4, "w")]


def test_recommendation_is_the_lowest_loss_within_the_budget():
    rec = recommend(RECORDS, 0.5, metric=LOSS)
    assert (rec.point.trial_id, rec.point.retention, rec.point.accuracy) == ("b", 0.5, 0.28)
    assert [(p.trial_id, p.retention) for p in rec.alternatives] == [("a", 0.5)]
    assert recommend(RECORDS, 0.2, metric=LOSS).point.trial_id == "a"
    assert recommend(RECORDS, 0.2).point.trial_id == "b"                     # as accuracy: the highest, b
    rows = recommendation_table(RECORDS, [0.2, 0.5], metric=LOSS)
    assert [(r["budget"], r["trial_id"], r["val_loss"]) for r in rows] == [(0.2, "a", 0.50), (0.5, "b", 0.28)]
    assert "accuracy" not in rows[0] and front_table(fronts(RECORDS, metric=LOSS).overall, LOSS)[0]["val_loss"] == 0.5


def test_confirmation_picks_the_lowest_losses():
    assert [r.trial_id for r in candidates(RECORDS, [0.2, 0.5], top=1, metric=LOSS)] == ["a", "b"]
    assert [r.trial_id for r in candidates(RECORDS, [0.2, 0.5], top=1)] == ["b"]


def test_a_diverged_seed_counts_as_the_worst_loss():
    seed = make("a-s1", "adamq3r", {}, status=DIVERGED, role=CONFIRMATION, confirms="a")
    pts = {(p.trial_id, p.retention): p for p in seed_points([A, B, seed], metric=LOSS)}
    assert pts[("a", 0.2)].seeds == 2 and pts[("a", 0.2)].accuracy == math.inf and math.isnan(pts[("a", 0.2)].std)
    assert recommend([A, B, seed], 0.2, metric=LOSS).point.trial_id == "b"   # a's mean over seeds is now +inf
    acc = {(p.trial_id, p.retention): p for p in seed_points([A, B, seed])}
    assert acc[("a", 0.2)].accuracy == pytest.approx(0.25)                    # accuracy: (0.5 + 0) / 2, as before


def test_the_default_metric_is_accuracy_keyed_acc():
    assert DEFAULT_METRIC == Metric("accuracy", "max") and DEFAULT_METRIC.at(0.2) == "acc@0.2"

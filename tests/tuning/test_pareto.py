"""tuning.analysis.pareto on hand-made trial records whose fronts and hypervolumes are worked out by hand."""
import math

import pytest

from tuning.trial.metrics import level_key
from tuning.analysis.pareto import (ParetoResult, Point, dominates, format_params, format_table, front_table, fronts, hypervolume, pareto_front, points)
from tuning.analysis.records import COMPLETED, FAILED, STOPPED, TrialRecord


def make_record(trial_id, technique, levels, status=COMPLETED, params=None, run_id=None):
    """levels: {retention: (parameters, targeted, accuracy)}, stored as a sweep stores metrics."""
    metrics = {"acc": max((a for _, _, a in levels.values()), default=0.0), "objective": 0.0}
    for p, (n, t, a) in levels.items():
        k = level_key(p)
        metrics[f"acc@{k}"], metrics[f"params@{k}"], metrics[f"targeted@{k}"] = a, n, t
    return TrialRecord(trial_id=trial_id, technique=technique, params=params or {"lr": 1e-3}, status=status,
                       epoch=40, metrics=metrics, run_id=run_id or f"run-{trial_id}")


def pt(parameters, accuracy, trial_id="t", technique="adamq3r", retention=0.2):
    return Point(trial_id, technique, {}, retention, parameters, parameters / 1000, accuracy, "")


# Dense model: 1000 parameters.
A = make_record("a", "adamq3r", {0.2: (200, 0.2, 0.80), 0.5: (500, 0.5, 0.90), 1.0: (1000, 1.0, 0.92)},
                params={"lmbda": 0.5, "lr": 1e-3})
B = make_record("b", "adamw", {0.2: (200, 0.2, 0.60), 0.5: (500, 0.5, 0.85), 1.0: (1000, 1.0, 0.95)})
C = make_record("c", "adamq3r", {0.2: (200, 0.2, 0.99)}, status=STOPPED)
D = make_record("d", "lora", {0.2: (100, 0.1, 0.99)}, status=FAILED)
RECORDS = [A, B, C, D]


def test_points_one_per_trial_and_level_of_completed_trials():
    pts = points(RECORDS)
    assert [(p.trial_id, p.retention) for p in pts] == [("a", 0.2), ("a", 0.5), ("a", 1.0),
                                                        ("b", 0.2), ("b", 0.5), ("b", 1.0)]
    assert pts[0] == Point("a", "adamq3r", {"lmbda": 0.5, "lr": 1e-3}, 0.2, 200, 0.2, 0.80, "run-a")
    assert isinstance(pts[0].parameters, int)


def test_points_statuses():
    assert {p.trial_id for p in points(RECORDS, statuses=(COMPLETED, STOPPED))} == {"a", "b", "c"}
    assert {p.trial_id for p in points(RECORDS, statuses=STOPPED)} == {"c"}
    assert points(RECORDS, statuses=()) == []
    with pytest.raises(ValueError, match="statuses=.*'finished'"):
        points(RECORDS, statuses=("finished",))


def test_points_reads_mlflow_floats_and_skips_unfinished_levels():
    rec = TrialRecord("x", "adamw", {}, COMPLETED, 5,
                      {"acc@0.1": float("nan"), "params@0.1": 100.0, "acc@0.2": 0.5, "params@0.2": 250.0,
                       "acc@0.4": 0.6, "acc": 0.7, "acc@1": 0.7, "params@1": 1000.0, "targeted@1": 1.0})
    pts = points([rec])
    assert [(p.retention, p.parameters, p.accuracy) for p in pts] == [(0.2, 250, 0.5), (1.0, 1000, 0.7)]
    assert math.isnan(pts[0].targeted) and pts[1].targeted == 1.0


def test_dominates():
    assert dominates(pt(100, 0.9), pt(200, 0.8))
    assert dominates(pt(100, 0.9), pt(100, 0.8))
    assert dominates(pt(100, 0.9), pt(200, 0.9))
    assert not dominates(pt(200, 0.8), pt(100, 0.9))
    assert not dominates(pt(100, 0.9), pt(100, 0.9))
    assert not dominates(pt(100, 0.8), pt(200, 0.9))


def test_pareto_front_exact():
    front = pareto_front(points(RECORDS))
    assert [(p.trial_id, p.retention) for p in front] == [("a", 0.2), ("a", 0.5), ("b", 1.0)]
    # a@1 (1000, 0.92) is dominated by b@1 (1000, 0.95); b@0.2 and b@0.5 by a's points.
    assert pareto_front([]) == []


def test_pareto_front_ties_and_order():
    pts = [pt(300, 0.7, "t2"), pt(300, 0.7, "t1"), pt(300, 0.6, "t0"), pt(400, 0.7, "t0"),
           pt(100, 0.5, "t9"), pt(200, 0.5, "t3"), pt(500, 0.9, "t5")]
    front = pareto_front(pts)
    assert [(p.parameters, p.accuracy, p.trial_id) for p in front] == [(100, 0.5, "t9"), (300, 0.7, "t1"),
                                                                       (500, 0.9, "t5")]
    assert pareto_front(list(reversed(pts))) == front
    # Same trial and level numbers at two retentions: the lower retention is kept.
    assert pareto_front([pt(300, 0.7, "t", retention=0.4), pt(300, 0.7, "t", retention=0.3)])[0].retention == 0.3
    # No point on the front dominates another; every point off it is dominated by one on it.
    assert not any(dominates(p, q) for p in front for q in front)
    assert all(any(dominates(f, p) or f[4:7] == p[4:7] for f in front) for p in pts)


def test_hypervolume_by_hand():
    # (0.2, 0.8), (0.5, 0.9), ref 1: (0.5-0.2)*0.8 + (1-0.5)*0.9 = 0.24 + 0.45 = 0.69
    assert hypervolume([pt(200, 0.8), pt(500, 0.9)], 1000) == pytest.approx(0.69)
    # ref accuracy 0.1, three points: 0.2*0.4 + 0.3*0.6 + 0.4*0.8 = 0.08 + 0.18 + 0.32 = 0.58;
    # dominated (400, 0.6), beyond the reference (1200, 0.99) and below it (50, 0.05) add nothing.
    front = [pt(100, 0.5), pt(300, 0.7), pt(600, 0.9)]
    assert hypervolume(front, 1000, 0.1) == pytest.approx(0.58)
    assert hypervolume(front + [pt(400, 0.6), pt(1200, 0.99), pt(50, 0.05)], 1000, 0.1) == pytest.approx(0.58)
    assert hypervolume([pt(1000, 0.95)], 1000) == 0.0
    assert hypervolume([], 1000) == 0.0
    assert hypervolume([pt(0, 1.0)], 1000) == pytest.approx(1.0)


def test_hypervolume_rejects_bad_reference():
    with pytest.raises(ValueError, match="ref_parameters=0"):
        hypervolume([pt(1, 0.5)], 0)
    with pytest.raises(ValueError, match="ref_accuracy=nan"):
        hypervolume([pt(1, 0.5)], 10, float("nan"))


def test_fronts_overall_and_per_technique():
    result = fronts(RECORDS)
    assert isinstance(result, ParetoResult)
    assert result.ref_parameters == 1000
    assert [(p.trial_id, p.retention) for p in result.overall] == [("a", 0.2), ("a", 0.5), ("b", 1.0)]
    assert sorted(result.per_technique) == ["adamq3r", "adamw"]          # stopped c, failed d left out
    assert [p.retention for p in result.per_technique["adamq3r"]] == [0.2, 0.5, 1.0]
    assert [p.retention for p in result.per_technique["adamw"]] == [0.2, 0.5, 1.0]
    assert result.hypervolume == pytest.approx(0.69)
    # adamq3r: 0.3*0.8 + 0.5*0.9 = 0.69; adamw: 0.3*0.6 + 0.5*0.85 = 0.18 + 0.425 = 0.605
    assert result.per_technique_hypervolume == pytest.approx({"adamq3r": 0.69, "adamw": 0.605})
    assert len(result.all_points) == 6
    with_stopped = fronts(RECORDS, statuses=(COMPLETED, STOPPED))
    # stopped c@0.2 (200, 0.99) dominates every other point: (1 - 0.2) * 0.99
    assert [(p.trial_id, p.retention) for p in with_stopped.overall] == [("c", 0.2)]
    assert with_stopped.hypervolume == pytest.approx(0.792)


def test_fronts_of_nothing():
    result = fronts([C, D])
    assert result.overall == [] and result.per_technique == {} and result.all_points == []
    assert result.hypervolume == 0.0 and result.ref_parameters == 0


def test_front_table_and_format_params():
    rows = front_table(fronts(RECORDS).overall)
    assert rows[0] == {"technique": "adamq3r", "hyperparameters": "lmbda=0.5 lr=0.001", "retention": 0.2,
                       "parameters": 200, "accuracy": 0.80, "trial_id": "a"}
    assert [r["trial_id"] for r in rows] == ["a", "a", "b"]
    assert format_params({"period": 5, "lr": 1e-5, "finetune": True}) == "finetune=True lr=1e-05 period=5"
    assert format_params({}) == ""


def test_format_table_exact():
    rows = [{"name": "a", "n": 5, "x": 0.5}, {"name": "bbb", "n": 12000, "x": 0.25}]
    assert format_table(rows) == ("name       n     x\n"
                                  "----  ------  ----\n"
                                  "a          5   0.5\n"
                                  "bbb   12,000  0.25")
    assert format_table([]) == "(no rows)"
    text = format_table(front_table(fronts(RECORDS).overall))
    assert text.splitlines()[0].split() == ["technique", "hyperparameters", "retention", "parameters",
                                            "accuracy", "trial_id"]
    assert "lmbda=0.5 lr=0.001" in text and "1,000" in text

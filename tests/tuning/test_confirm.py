"""Confirmation over seeds on hand-made records: which configurations are trained again, and how the
recommendation then ranks by the mean over seeds."""
import dataclasses
import math
import statistics

import pytest

from tuning.analysis.confirm import candidates, plan
from tuning.analysis.recommend import recommend, recommendation_table, seed_points
from tuning.analysis.records import COLLAPSED, COMPLETED, CONFIRMATION, DIVERGED, outcome_lines

from tests.tuning.test_recommend import make_record

# two adamq3r configurations and one adamw; at 0.1, A (single seed 0.80) beats B (0.78) beats W (0.60)
A = make_record("a", "adamq3r", {0.1: (150, 0.1, 0.80), 0.2: (250, 0.2, 0.90)}, params={"lmbda": 1.0})
B = make_record("b", "adamq3r", {0.1: (150, 0.1, 0.78), 0.2: (250, 0.2, 0.91)}, params={"lmbda": 3.0})
W = make_record("w", "adamw", {0.1: (150, 0.1, 0.60), 0.2: (250, 0.2, 0.92)}, params={"weight_decay": 0.0})
A_AGAIN = make_record("a2", "adamq3r", {0.1: (150, 0.1, 0.79)}, params={"lmbda": 1.0})   # same config as A


def seed_run(confirms, trial_id, acc_01, acc_02=0.9, status=COMPLETED, technique="adamq3r"):
    r = make_record(trial_id, technique, {0.1: (150, 0.1, acc_01), 0.2: (250, 0.2, acc_02)}, status=status)
    return dataclasses.replace(r, role=CONFIRMATION, confirms=confirms)


def test_candidates_are_the_top_distinct_configurations_of_each_budget_once():
    picked = candidates([A, B, W, A_AGAIN], budgets=[0.1, 0.2], top=1)
    assert [r.trial_id for r in picked] == ["a", "w"]              # 0.1 -> a; 0.2 -> w (0.92)
    picked = candidates([A, B, W, A_AGAIN], budgets=[0.1, 0.2], top=2)
    assert [r.trial_id for r in picked] == ["a", "b", "w"]         # a2 repeats a's configuration: skipped
    assert candidates([A, B, W], budgets=[0.1], top=0) == []


def test_plan_gives_each_candidate_new_seeds():
    points = plan([A, B, W], budgets=[0.1, 0.2], top=1, seeds=2, base_seed=7)
    assert points == [
        {"technique": "adamq3r", "adamq3r.lmbda": 1.0, "seed": 8, "confirms": "a"},
        {"technique": "adamq3r", "adamq3r.lmbda": 1.0, "seed": 9, "confirms": "a"},
        {"technique": "adamw", "adamw.weight_decay": 0.0, "seed": 8, "confirms": "w"},
        {"technique": "adamw", "adamw.weight_decay": 0.0, "seed": 9, "confirms": "w"}]
    assert plan([A, B, W], [0.1], top=1, seeds=0, base_seed=0) == []
    # confirmation runs already in the sweep are not candidates themselves
    assert [r.trial_id for r in candidates([A, seed_run("a", "s", 0.99)], [0.1], top=2)] == ["a"]


def test_seed_points_average_the_trial_and_its_confirmations():
    records = [A, B, seed_run("a", "a-s1", 0.70), seed_run("a", "a-s2", 0.72), seed_run("b", "b-s1", 0.0, 0.0,
                                                                                         status=DIVERGED)]
    pts = {(p.trial_id, p.retention): p for p in seed_points(records)}
    a = pts[("a", 0.1)]
    assert a.seeds == 3 and a.accuracy == pytest.approx(statistics.fmean([0.80, 0.70, 0.72]))
    assert a.std == pytest.approx(statistics.stdev([0.80, 0.70, 0.72]))
    b = pts[("b", 0.1)]                                            # a diverged seed counts as accuracy 0
    assert b.seeds == 2 and b.accuracy == pytest.approx(0.39)
    assert pts[("b", 0.2)].accuracy == pytest.approx(0.455)
    assert len(pts) == 4                                           # confirmation runs are no points of their own


def test_the_recommendation_ranks_confirmed_configurations_by_their_mean():
    # A won the search at 0.1 on one seed (0.80); its new seeds say 0.70 / 0.72, while B's say 0.79 / 0.80
    records = [A, B, W, seed_run("a", "a-s1", 0.70), seed_run("a", "a-s2", 0.72),
               seed_run("b", "b-s1", 0.79), seed_run("b", "b-s2", 0.80)]
    rec = recommend(records, 0.1)
    assert rec.point.trial_id == "b" and rec.point.seeds == 3
    assert rec.point.accuracy == pytest.approx(statistics.fmean([0.78, 0.79, 0.80]))
    table = {row["budget"]: row for row in recommendation_table(records, [0.1, 0.2])}
    assert table[0.1]["trial_id"] == "b" and table[0.1]["seeds"] == 3 and table[0.1]["std"] > 0
    # W (0.92 on one seed) is not confirmed; at 0.2 only confirmed configurations are eligible
    assert table[0.2]["trial_id"] in ("a", "b") and table[0.2]["seeds"] == 3
    # without confirmation runs the single runs are ranked as before, with no spread
    single = {row["budget"]: row for row in recommendation_table([A, B, W], [0.1, 0.2])}
    assert (single[0.1]["trial_id"], single[0.2]["trial_id"]) == ("a", "w")
    assert single[0.1]["seeds"] == 1 and single[0.1]["std"] is None


def test_outcome_lines_count_search_trials_per_technique_and_the_confirmations_apart():
    collapsed = dataclasses.replace(make_record("c", "lorita", {0.1: (150, 0.1, 0.1)}), status=COLLAPSED)
    lines = outcome_lines([A, B, collapsed, seed_run("a", "a-s1", 0.7)], techniques=["adamq3r", "lorita", "lora"])
    assert lines[0] == "adamq3r: 2 completed"
    assert lines[1].startswith("lorita: NO completed trial (1 collapsed)")
    assert lines[2].startswith("lora: no trial ran")
    assert lines[3].startswith("confirmation: 1 runs (1 completed) of 1 configuration(s)")
    assert not math.isnan(seed_points([A])[0].accuracy)


def test_the_front_figure_shows_confirmed_points_with_their_spread():
    from dashboards.figures import plot_pareto_front
    from tuning.analysis.pareto import fronts

    records = [A, B, seed_run("a", "a-s1", 0.70), seed_run("a", "a-s2", 0.72)]
    result = fronts(records)
    assert {(p.trial_id, p.retention) for p in result.confirmed} == {("a", 0.1), ("a", 0.2)}
    assert len(result.all_points) == 4                                   # the seeds are not points of the front
    fig = plot_pareto_front(result)
    (trace,) = [t for t in fig.data if t.name.startswith("confirmed over seeds")]
    assert list(trace.error_y.array) == pytest.approx([p.std for p in result.confirmed])
    assert not [t for t in plot_pareto_front(fronts([A, B])).data if t.name.startswith("confirmed")]

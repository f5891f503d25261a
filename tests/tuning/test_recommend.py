"""tuning.analysis.recommend on hand-made trial records with known best points per budget."""
import copy

import pytest
import yaml

from tuning.trial import spec as q3r_config
from tuning.trial.metrics import level_key
from tuning.analysis.pareto import Point
from tuning.analysis.recommend import (Recommendation, parse_budget, recommend, recommendation_table, recommended_config, write_spec)
from tuning.analysis.records import COMPLETED, DIVERGED, STOPPED, TrialRecord


def make_config(technique, retentions=(0.1, 0.4), **fields):
    return {"data": {"name": "digits"}, "model": {"kind": "vit", "depth": 4, "width": 64},
            "technique": {"name": technique, "lr": 1e-3, **fields},
            "train": {"epochs": 40, "batch_size": 64, "eval_every": 10, "retentions": list(retentions)}}


def make_record(trial_id, technique, levels, status=COMPLETED, params=None, config=None):
    """levels: {retention: (parameters, targeted, accuracy)}, stored as a sweep stores metrics."""
    metrics = {"acc": 0.9, "objective": 0.0}
    for p, (n, t, a) in levels.items():
        k = level_key(p)
        metrics[f"acc@{k}"], metrics[f"params@{k}"], metrics[f"targeted@{k}"] = a, n, t
    return TrialRecord(trial_id=trial_id, technique=technique, params=params or {}, status=status, epoch=40,
                       metrics=metrics, config=config if config is not None else make_config(technique),
                       run_id=f"run-{trial_id}")


Q1 = make_record("q1", "adamq3r", {0.1: (150, 0.1, 0.70), 0.2: (250, 0.2, 0.88), 1.0: (1000, 1.0, 0.93)},
                 params={"lmbda": 0.5, "lr": 1e-3},
                 config=make_config("adamq3r", lmbda=0.5, target_rank=0.1, period=5))
W1 = make_record("w1", "adamw", {0.1: (150, 0.1, 0.55), 0.2: (250, 0.2, 0.86), 1.0: (1000, 1.0, 0.95)},
                 params={"weight_decay": 0.05})
L1 = make_record("l1", "lora", {0.1: (150, 0.1, 0.50), 0.2: (250, 0.2, 0.80)})
S1 = make_record("s1", "adamq3r", {0.1: (150, 0.1, 0.99)}, status=STOPPED)
X1 = make_record("x1", "adamq3r", {0.05: (100, 0.05, 0.99)}, status=DIVERGED)
RECORDS = [Q1, W1, L1, S1, X1]


def where(point):
    return point.trial_id, point.retention


@pytest.mark.parametrize("text, expected", [("0.2", 0.2), (" 0.5 ", 0.5), ("1", 1.0), ("1.0", 1.0),
                                            ("50000", 50000), ("5e4", 50000), ("2", 2), ("1e-3", 0.001)])
def test_parse_budget(text, expected):
    value = parse_budget(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["abc", "", "0", "-0.1", "1.5", "nan", "inf", "20%", "0,2"])
def test_parse_budget_errors_name_the_value(text):
    with pytest.raises(ValueError, match=f"text={text!r}"):
        parse_budget(text)


def test_recommend_fraction_budget():
    rec = recommend(RECORDS, 0.2)
    assert isinstance(rec, Recommendation) and rec.budget == 0.2
    assert rec.point == Point("q1", "adamq3r", {"lmbda": 0.5, "lr": 1e-3}, 0.2, 250, 0.2, 0.88, "run-q1")
    assert rec.record is Q1
    # One per other technique, best first; q1@0.1 is adamq3r again.
    assert [where(p) for p in rec.alternatives] == [("w1", 0.2), ("l1", 0.2)]
    assert where(recommend(RECORDS, "0.1").point) == ("q1", 0.1)
    assert where(recommend(RECORDS, 1.0).point) == ("w1", 1.0)
    assert [where(p) for p in recommend(RECORDS, 1.0).alternatives] == [("q1", 1.0), ("l1", 0.2)]
    assert [where(p) for p in recommend(RECORDS, 1.0, n_alternatives=1).alternatives] == [("q1", 1.0)]


def test_recommend_count_budget():
    assert where(recommend(RECORDS, 300).point) == ("q1", 0.2)
    assert where(recommend(RECORDS, 249).point) == ("q1", 0.1)
    assert where(recommend(RECORDS, "5e4").point) == ("w1", 1.0)
    assert recommend(RECORDS, "250").budget == 250 and recommend(RECORDS, 250.0).budget == 250


def test_fraction_budget_tolerates_rounding():
    r = make_record("r", "adamw", {0.3: (300, 0.3 + 1e-12, 0.9)})
    assert where(recommend([r], 0.3).point) == ("r", 0.3)
    assert where(recommend([r], "0.3").point) == ("r", 0.3)
    with pytest.raises(ValueError):
        recommend([r], 0.2999)


def test_recommend_statuses():
    assert where(recommend(RECORDS, 0.1, statuses=(COMPLETED, STOPPED)).point) == ("s1", 0.1)
    assert recommend(RECORDS, 0.1, statuses=(COMPLETED, STOPPED)).record is S1


def test_recommend_ties():
    a = make_record("a", "adamw", {0.2: (250, 0.2, 0.88)})
    b = make_record("b", "adamq3r", {0.2: (250, 0.2, 0.88)})
    c = make_record("c", "lora", {0.2: (240, 0.2, 0.88)})
    assert recommend([b, a], 0.2).point.trial_id == "a"           # same accuracy and parameters: trial_id
    assert recommend([b, a, c], 0.2).point.trial_id == "c"        # same accuracy: fewer parameters
    assert [p.trial_id for p in recommend([b, a, c], 0.2).alternatives] == ["a", "b"]


def test_nothing_within_budget_says_the_smallest_reached():
    with pytest.raises(ValueError, match=r"budget=0\.05.*smallest budget any trial reached is a fraction of 0\.1 "):
        recommend(RECORDS, 0.05)                                  # diverged x1 reached 0.05, but does not count
    with pytest.raises(ValueError, match=r"budget=100.*smallest budget any trial reached is 150 parameters"):
        recommend(RECORDS, 100)
    with pytest.raises(ValueError, match="no trial with status"):
        recommend([X1], 0.5)
    with pytest.raises(ValueError, match="budget=-3"):
        recommend(RECORDS, -3)
    with pytest.raises(ValueError, match="budget=True"):
        recommend(RECORDS, True)


def test_recommended_config_adds_the_level():
    before = copy.deepcopy(Q1.config)
    cfg = recommended_config(recommend(RECORDS, 0.2))
    assert cfg["train"]["retentions"] == [0.1, 0.2, 0.4, 1.0]
    assert cfg["technique"] == {"name": "adamq3r", "lr": 1e-3, "lmbda": 0.5, "target_rank": 0.1, "period": 5}
    assert Q1.config == before                                    # the record is left alone
    assert q3r_config.from_dict(cfg).technique.lmbda == 0.5
    # A config without retentions: the levels the trial was scored at, plus the recommended one and 1.
    r = make_record("r", "adamw", {0.15: (200, 0.15, 0.9)}, config={"technique": {"name": "adamw"}})
    assert recommended_config(recommend([r], 0.2))["train"]["retentions"] == [0.15, 1.0]


def test_recommended_config_needs_a_config():
    r = make_record("r", "adamw", {0.2: (200, 0.2, 0.9)}, config={})
    with pytest.raises(ValueError, match="'r'"):
        recommended_config(recommend([r], 0.2))


def test_write_spec_loads_and_carries_the_technique(tmp_path):
    path = write_spec(recommend(RECORDS, "0.2"), tmp_path / "specs" / "best.yaml")
    cfg = q3r_config.load(path)
    assert (cfg.technique.name, cfg.technique.lmbda, cfg.technique.target_rank, cfg.technique.period) == \
           ("adamq3r", 0.5, 0.1, 5)
    assert cfg.train.retentions == [0.1, 0.2, 0.4, 1.0] and cfg.train.epochs == 40
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0] == "# q3r-tune recommendation for a budget of 0.2 of the targeted parameters"
    assert header[1] == "# technique: adamq3r (lmbda=0.5 lr=0.001)"
    assert header[2] == ("# expected accuracy: 0.8800 (1 seed) after truncation at retention 0.2 "
                         "(250 parameters, 20.0% of the targeted parameters)")
    assert header[3] == "# source trial: q1 (MLflow run run-q1)"
    assert yaml.safe_load(text) == recommended_config(recommend(RECORDS, 0.2))
    count = write_spec(recommend(RECORDS, 5e4), tmp_path / "count.yaml").read_text()
    assert count.startswith("# q3r-tune recommendation for a budget of 50,000 parameters (whole model)")


def test_recommendation_table():
    rows = recommendation_table(RECORDS, ["0.05", 0.1, "0.2", 300, 1000])
    assert rows == [
        {"budget": 0.1, "technique": "adamq3r", "hyperparameters": "lmbda=0.5 lr=0.001", "retention": 0.1,
         "parameters": 150, "accuracy": 0.70, "std": None, "seeds": 1, "trial_id": "q1"},
        {"budget": 0.2, "technique": "adamq3r", "hyperparameters": "lmbda=0.5 lr=0.001", "retention": 0.2,
         "parameters": 250, "accuracy": 0.88, "std": None, "seeds": 1, "trial_id": "q1"},
        {"budget": 300, "technique": "adamq3r", "hyperparameters": "lmbda=0.5 lr=0.001", "retention": 0.2,
         "parameters": 250, "accuracy": 0.88, "std": None, "seeds": 1, "trial_id": "q1"},
        {"budget": 1000, "technique": "adamw", "hyperparameters": "weight_decay=0.05", "retention": 1.0,
         "parameters": 1000, "accuracy": 0.95, "std": None, "seeds": 1, "trial_id": "w1"},
    ]
    assert recommendation_table([], [0.2]) == []
    with pytest.raises(ValueError, match="text='lots'"):
        recommendation_table(RECORDS, ["lots"])


def test_accuracy_text_gives_the_spread_and_the_number_of_seeds():
    from tuning.analysis.recommend import accuracy_text

    assert accuracy_text(0.93061, 0.01204, 3) == "0.9306 +- 0.0120 (3 seeds)"
    assert accuracy_text(0.88, float("nan"), 1) == "0.8800 (1 seed)"

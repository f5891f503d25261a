"""tuning.trial.metrics: the score names built, parsed and converted to MLflow's names and back."""
import pytest

from tuning.trial.metrics import (acc_key, from_mlflow, is_level_key, level_key, level_of, levels, logged,
                                  metric_key, mlflow_key, objective_key, objective_value, params_key, split_key,
                                  targeted_key)


def test_keys_name_the_level_as_g():
    assert [level_key(p) for p in (0.2, 1.0, 1, "0.05", 0.1 + 0.2)] == ["0.2", "1", "1", "0.05", "0.3"]
    assert (acc_key(0.2), params_key(1.0), targeted_key(0.05)) == ("acc@0.2", "params@1", "targeted@0.05")


@pytest.mark.parametrize("name, expected", [
    ("acc@0.2", ("acc", 0.2)), ("params@1", ("params", 1.0)), ("targeted@5e-2", ("targeted", 0.05)),
    ("acc", ("acc", None)), ("objective", ("objective", None)), ("diag/mean/gap@r", ("diag/mean/gap@r", None)),
    ("acc@", ("acc@", None)), ("acc@ 0.2", ("acc@ 0.2", None)), ("acc@nan", ("acc@nan", None)),
    ("loss@0.2", ("loss@0.2", None)), ("acc@0.2.1", ("acc@0.2.1", None)),
])
def test_split_key(name, expected):
    assert split_key(name) == expected
    assert is_level_key(name) == (expected[1] is not None)


def test_levels_in_the_dicts_order_and_by_score():
    metrics = {"acc": 0.9, "acc@0.5": 0.8, "params@0.5": 50, "acc@0.1": 0.6, "params@0.1": 10, "epoch": 3}
    assert levels(metrics) == [0.5, 0.1] and levels(metrics, "params") == [0.5, 0.1]
    assert levels(metrics, "targeted") == []
    assert level_of("params@0.1") is None and level_of("params@0.1", "params") == 0.1


def test_mlflow_names_round_trip_and_counts_come_back_as_ints():
    report = {"acc": 0.9, "acc@0.2": 0.7, "params@0.2": 1234, "targeted@0.2": 0.2, "diag/mean/eps": 1e-3}
    logged_names = {mlflow_key(k): float(v) for k, v in report.items()}
    assert set(logged_names) == {"acc", "acc_at_0.2", "params_at_0.2", "targeted_at_0.2", "diag/mean/eps"}
    assert {metric_key(k) for k in logged_names} == set(report)
    back = from_mlflow(logged_names)
    assert back == report and isinstance(back["params@0.2"], int) and isinstance(back["acc@0.2"], float)


def test_what_a_sweep_logs():
    assert all(logged(k) for k in ("epoch", "train_loss", "time_s", "acc", "objective", "acc@0.1", "diag/mean/x"))
    assert not any(logged(k) for k in ("status", "seconds", "technique"))


def test_objective_names():
    assert objective_key("mean", [0.1, 1.0]) == "mean" and objective_key("acc@0.20", [0.2, 1.0]) == "acc@0.2"
    for bad in ("acc@0.3", "acc", "acc@x", "params@0.2", "max"):
        with pytest.raises(ValueError, match=f"but got '{bad}'"):
            objective_key(bad, [0.2, 1.0])
    with pytest.raises(ValueError, match="mean needs a retention level < 1"):
        objective_key("mean", [1.0])
    m = {"acc@0.1": 0.5, "acc@0.2": 0.7, "acc@1": 0.9}
    assert objective_value(m, "mean", [0.1, 0.2, 1.0]) == pytest.approx(0.6)
    assert objective_value(m, "acc@0.2", [0.1, 0.2]) == 0.7
    with pytest.raises(KeyError, match="needs acc@0.4"):
        objective_value(m, "acc@0.4", [0.4])


def test_a_metrics_keys_and_direction():
    from tuning.trial.metrics import DEFAULT_METRIC, Metric, diverged_objective, objective_text, score_key

    loss = Metric("val_loss", "min")
    assert (score_key(DEFAULT_METRIC), score_key(DEFAULT_METRIC, 0.2)) == ("acc", "acc@0.2")
    assert (score_key(loss), score_key(loss, 0.20), score_key(loss, 1.0)) == ("val_loss", "val_loss@0.2", "val_loss@1")
    assert loss.better(0.1, 0.2) and not DEFAULT_METRIC.better(0.1, 0.2) and (loss.sign, DEFAULT_METRIC.sign) == (-1, 1)
    assert split_key("val_loss@0.2", "val_loss") == ("val_loss", 0.2) and split_key("val_loss@0.2")[1] is None
    assert levels({"val_loss@0.5": 1.0, "acc@0.1": 0.5, "val_loss@0.1": 2.0}, loss.key) == [0.5, 0.1]
    assert logged("val_loss", loss) and not logged("val_loss") and logged("val_loss@0.2")
    assert from_mlflow({mlflow_key("val_loss@0.2"): 1.5}) == {"val_loss@0.2": 1.5}
    assert objective_key("val_loss@0.20", [0.2, 1.0], loss) == "val_loss@0.2"
    with pytest.raises(ValueError, match="'val_loss@p' .* but got 'acc@0.2'"):
        objective_key("acc@0.2", [0.2, 1.0], loss)
    m = {"val_loss@0.1": 2.0, "val_loss@0.2": 1.0, "acc@0.1": 0.5}
    assert objective_value(m, "mean", [0.1, 0.2, 1.0], loss) == pytest.approx(1.5)
    assert objective_text("mean", loss) == "mean val_loss over p < 1 (lower is better)"
    assert diverged_objective() == 0.0 and diverged_objective(loss) != diverged_objective(loss)     # NaN


@pytest.mark.parametrize("name, mode, message", [
    ("val loss", "min", "name must be letters"), ("my_at_x", "min", "without '_at_'"), ("objective", "max", "must not"),
    ("val_loss", "lower", r"mode must be 'max' \(higher is better\) or 'min'.*but got 'lower'"),
])
def test_a_bad_metric_names_the_value(name, mode, message):
    from tuning.trial.metrics import Metric

    with pytest.raises(ValueError, match=message):
        Metric(name, mode)

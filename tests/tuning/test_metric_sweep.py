"""A real sweep (Ray, ASHA, Optuna, MLflow) whose metric is the validation loss, lower is better."""
from __future__ import annotations

import json
import math

import optuna
import pytest

from mlflow.tracking import MlflowClient
from optuna.study import StudyDirection

from tuning import cli
from tuning.analysis.pareto import points
from tuning.analysis.recommend import within
from tuning.spec.sweep import from_dict
from tuning.sweep.driver import run_sweep
from tuning.tracking.results import sweep_metric
from tuning.tracking.store import find_sweep

from tests.conftest import _start_ray
from tests.tuning.sweep_helpers import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("metric_sweep")]   # one worker builds the module's sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, _ray_folder, fresh_store):
    folder = tmp_path_factory.mktemp("loss")
    spec = from_dict(tiny_spec(name="tiny-loss", epochs=2, num_samples=4, metric={"name": "val_loss"},
                               objective="val_loss@0.5"), source="tiny.yaml")
    _start_ray(_ray_folder)                            # the session's Ray (tests/conftest.py)
    outcome = run_sweep(spec, tracking_uri=fresh_store(folder / "mlruns.db"), storage=str(folder / "runs"))
    return spec, outcome


def test_trials_report_the_loss_and_optuna_minimizes_it(sweep):
    spec, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    parent = find_sweep(client, spec.experiment_name)
    assert sweep_metric(parent) == spec.score and spec.score.mode == "min"
    completed = [r for r in outcome.records if r.status == "completed"]
    assert completed
    for r in completed:
        assert r.metrics["objective"] == pytest.approx(r.metrics["val_loss@0.5"])
        assert r.metrics["val_loss"] == pytest.approx(r.metrics["val_loss@1"]) and r.metrics["val_loss"] > 0
        assert "val_loss" in {h for e in r.history for h in e}                  # the history keeps it
    for technique in spec.spaces:
        study = optuna.load_study(study_name=f"{spec.experiment_name}/{technique}",
                                  storage=f"sqlite:///{outcome.storage}/optuna.db")
        assert study.direction == StudyDirection.MINIMIZE


def test_recommendation_and_tables_follow_the_loss(sweep, capsys):
    spec, outcome = sweep
    rows = outcome.summary["recommendations"]
    assert rows and all("val_loss" in row and "accuracy" not in row for row in rows)
    pts = points(outcome.records, metric=spec.score)
    for row in rows:                                      # the lowest loss within each budget, by an independent scan
        best = min(p.accuracy for p in pts if within(p, row["budget"]))
        assert row["val_loss"] == best and math.isfinite(best)
    assert cli.main(["pareto", spec.experiment_name, "--tracking-uri", outcome.tracking_uri]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("technique"))
    assert "val_loss" in header.split() and "accuracy" not in header
    client = MlflowClient(outcome.tracking_uri)
    fronts = json.loads(_artifact_text(client, outcome.parent_run_id, "pareto/fronts.json"))
    assert fronts["metric"] == {"name": "val_loss", "mode": "min"}
    assert fronts["ref_value"] == max(p.accuracy for p in pts)


def _artifact_text(client, run_id, path):
    from mlflow.artifacts import download_artifacts

    return open(download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=client.tracking_uri)).read()

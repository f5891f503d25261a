"""A real sweep on tiny work: Ray Tune with ASHA, Optuna TPE, MLflow parent and child runs; the grid and
multi-objective searchers through the same driver on replayed trials."""
from __future__ import annotations

import json
import re
from typing import Callable

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray import tune

from benchmarks.efficiency.replay import reports_of
from benchmarks.efficiency.table import Run
from benchmarks.efficiency.trainable import replay_trial

from tuning.trial import spec as config
from tuning import cli
from tuning.analysis.records import outcome_lines
from tuning.tracking.results import load_records
from tuning.spec.sweep import from_dict
from tuning.sweep import driver
from tuning.sweep.driver import run_sweep
from tuning.tracking.store import find_sweep

from tests.dashboards.test_dashboards import report_rows
from tests.tuning.sweep_helpers import tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def sweep(tiny_sweep):
    """The session's shared tiny sweep (tests/conftest.py): 8 trials with ASHA and TPE, 1 x 2 confirmation runs."""
    return tiny_sweep


def search(records):
    return [r for r in records if r.role == "trial"]


def test_asha_stopped_trials_are_pruned_in_optuna(sweep):
    spec, uri, outcome, folder = sweep
    statuses = [r.status for r in search(outcome.records)]
    assert len(statuses) == spec.num_samples
    assert statuses.count("stopped") >= 1 and statuses.count("completed") >= 1
    assert set(statuses) <= {"completed", "stopped"}
    storage = f"sqlite:///{outcome.storage}/optuna.db"
    studies = [optuna.load_study(study_name=f"{spec.experiment_name}/{t}", storage=storage) for t in spec.spaces]
    trials = [t for study in studies for t in study.trials]
    assert [len(study.trials) for study in studies] == list(spec.allocation().values())   # each its own share
    states = [t.state for t in trials]
    assert states.count(TrialState.PRUNED) == statuses.count("stopped")
    assert states.count(TrialState.COMPLETE) == statuses.count("completed")
    for r in search(outcome.records):        # the study's objective is the value the trial reported
        if r.status == "completed":
            assert any(t.value == pytest.approx(r.metrics["objective"]) for t in trials
                       if t.state == TrialState.COMPLETE)


def test_mlflow_parent_and_one_child_per_trial(sweep):
    spec, uri, outcome, folder = sweep
    client = MlflowClient(uri)
    parent = find_sweep(client, spec.experiment_name)
    assert parent.info.run_id == outcome.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.tags["version.torch"] and parent.data.params["num_samples"] == "8"
    records = search(load_records(client, parent.info.run_id))
    assert len(records) == spec.num_samples and len({r.trial_id for r in records}) == spec.num_samples
    for r in records:
        run = client.get_run(r.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["technique.name"] == r.technique
        for key in ("acc_at_0.1", "acc_at_0.5", "acc_at_1", "params_at_0.1", "targeted_at_0.5", "objective"):
            steps = [m.step for m in client.get_metric_history(r.run_id, key)]
            assert steps == list(range(1, r.epoch + 1)), key      # every evaluation, stepped by epoch
        expected = sum(r.metrics[f"acc@{p}"] for p in ("0.1", "0.5")) / 2
        assert r.metrics["objective"] == pytest.approx(expected)
        assert r.epoch == (spec.epochs if r.status == "completed" else r.epoch) and r.epoch >= 1
        assert config.from_dict(r.config).technique.name == r.technique
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "pareto", "recommendations.json", "recommended", "sweep_spec.yaml"} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "pareto/fronts.json", str(folder))
    fronts = json.loads(open(local).read())
    assert fronts["overall"] and 0 < fronts["hypervolume"] <= 1
    assert parent.data.metrics["hypervolume"] == pytest.approx(fronts["hypervolume"])


def test_pareto_and_recommend_commands_read_the_sweep(sweep, tmp_path, capsys):
    spec, uri, outcome, folder = sweep
    assert cli.main(["pareto", spec.experiment_name, "--tracking-uri", uri, "--per-technique"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front, all techniques" in out and "adamq3r" in out + "adamw"
    assert "Trials by technique:" in out and "  adamq3r: " in out and "  adamw: " in out
    target = tmp_path / "rec.yaml"
    assert cli.main(["recommend", spec.experiment_name, "--tracking-uri", uri, "--budget", "0.5",
                     "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert "best within budget 0.5" in out
    assert re.search(r"accuracy \d\.\d{4} \+- \d\.\d{4} \(3 seeds\)", out), out   # the trial and its 2 confirmations
    cfg = config.load(target)                       # q3r-tune train runs it as is
    assert cfg.technique.name in ("adamq3r", "adamw") and cfg.train.epochs == spec.epochs
    assert cli.main(["recommend", spec.experiment_name, "--tracking-uri", uri, "--budget", "1e-9"]) == 2
    assert "budget" in capsys.readouterr().err
    assert cli.main(["pareto", "no-such-sweep", "--tracking-uri", uri]) == 2
    assert "no sweep named 'no-such-sweep'" in capsys.readouterr().err


def test_the_best_configurations_are_confirmed_with_new_seeds(sweep):
    spec, uri, outcome, folder = sweep
    client = MlflowClient(uri)
    records = load_records(client, outcome.parent_run_id)
    by_id = {r.trial_id: r for r in search(records)}
    confirmations = [r for r in records if r.role == "confirmation"]
    assert confirmations and len(confirmations) % 2 == 0
    assert sorted(r.seed for r in confirmations) == [1, 2] * (len(confirmations) // 2)     # seed 0 + 1, + 2
    assert len({(r.confirms, r.seed) for r in confirmations}) == len(confirmations)         # each seed once
    for r in confirmations:
        source = by_id[r.confirms]
        assert source.status == "completed" and r.technique == source.technique and r.params == source.params
        assert r.status == "completed" and r.epoch == spec.epochs
        assert client.get_run(r.run_id).data.tags["q3r.confirms"] == r.confirms
    local = client.download_artifacts(outcome.parent_run_id, "recommendations.json", str(folder))
    rows = json.loads(open(local).read())["budgets"]
    assert rows and all(row["seeds"] == 3 and row["trial_id"] in {r.confirms for r in confirmations} for row in rows)
    # the report on the parent run shows the same budgets, each confirmed (3 seeds), and no other
    page = open(client.download_artifacts(outcome.parent_run_id, "report.html", str(folder))).read()
    shown = report_rows(page)
    assert [row["budget"] for row in shown] == [f"{row['budget']:g} of targeted" for row in rows]
    assert {row["seeds"] for row in shown} == {"3"}
    assert any(line.startswith("confirmation: ") for line in outcome_lines(outcome.records))


GRID_TECHNIQUES = {"adamw": {"lr": {"choice": [2.0e-3, 5.0e-3]}},
                   "adamq3r": {"lr": 3.0e-3, "lmbda": {"choice": [0.5, 2.0]}, "target_rank": 0.2, "period": 5}}


def replayed(spec) -> Callable:
    """The sweep driver's ``trainable_of`` with the efficiency benchmark's replay trainable: each trial of
    ``GRID_TECHNIQUES`` reports one hand-made epoch (accuracies that differ by configuration) instead of
    training, so its Ray worker loads no torch. For the tests of what the searchers decide."""
    configs = [("adamw", {"lr": lr}) for lr in (2.0e-3, 5.0e-3)] + \
              [("adamq3r", {"lr": 3.0e-3, "lmbda": lmbda, "target_rank": 0.2, "period": 5}) for lmbda in (0.5, 2.0)]
    runs = []
    for i, (technique, params) in enumerate(configs):
        row = {"epoch": 1, "seconds": 0.0, "acc": 0.9 - 0.01 * i}
        for p in spec.retentions:
            row[f"acc@{p:g}"], row[f"params@{p:g}"], row[f"targeted@{p:g}"] = 0.3 + 0.1 * i + p / 2, int(1000 * p), p
        runs.append(Run(f"t{i}", technique, params, "trial", "", 0, "completed", [row]))
    reports = reports_of(runs, spec.objective, spec.retentions)

    def trainable_of(spec, spec_dict):
        return tune.with_resources(tune.with_parameters(replay_trial, reports=reports),
                                   {"cpu": spec.resources.cpu, "gpu": 0})
    return trainable_of


@pytest.mark.parametrize("searcher", ["grid", "multi"])
def test_grid_and_multi_objective_searchers(searcher, tmp_path, ray_session, fresh_store, monkeypatch):
    spec = from_dict(tiny_spec(name=f"tiny-{searcher}", epochs=1, num_samples=1 if searcher == "grid" else 3,
                               techniques=GRID_TECHNIQUES, scheduler={"kind": "fifo"}, searcher={"kind": searcher}),
                     source="tiny.yaml")
    monkeypatch.setattr(driver, "trainable_of", replayed(spec))
    outcome = run_sweep(spec, tracking_uri=fresh_store(tmp_path / "m.db"), storage=str(tmp_path / "runs"))
    seen = sorted((r.technique, tuple(sorted(r.params.items()))) for r in outcome.records)
    assert all(r.status == "completed" for r in outcome.records)
    if searcher == "grid":                               # every grid point exactly once
        assert seen == sorted([("adamw", (("lr", 2e-3),)), ("adamw", (("lr", 5e-3),)),
                               ("adamq3r", (("lmbda", 0.5), ("lr", 3e-3), ("period", 5), ("target_rank", 0.2))),
                               ("adamq3r", (("lmbda", 2.0), ("lr", 3e-3), ("period", 5), ("target_rank", 0.2)))])
    else:                                                # one Optuna value per retention level p < 1
        storage = f"sqlite:///{outcome.storage}/optuna.db"
        trials = []
        for technique in spec.spaces:
            study = optuna.load_study(study_name=f"{spec.experiment_name}/{technique}", storage=storage)
            assert len(study.directions) == 2
            trials += study.trials
        assert len(trials) == 3
        for t in trials:
            assert t.state == TrialState.COMPLETE and len(t.values) == 2


def test_rays_status_tables_go_to_the_sweeps_progress_log(sweep):
    spec, uri, outcome, folder = sweep
    logs = sorted((folder / "runs").rglob("progress.log"))
    assert logs, "no progress.log under the sweep's storage"
    text = logs[0].read_text()
    assert "objective" in text and "technique" in text and ("adamq3r" in text or "adamw" in text)

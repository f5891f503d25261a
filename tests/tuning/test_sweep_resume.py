"""A driver killed mid-sweep, then ``q3r-tune resume``: every trial once, every MLflow run once.

Each driver is its own process with its own Ray (killed with it), as ``q3r-tune sweep`` runs on one machine.
The work is the least that still has, at the kill, trials running halfway and trials not yet started."""
from __future__ import annotations

import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.results import load_records
from tuning.tracking.store import find_sweep

from tests.tuning.sweep_helpers import (cli, kill_group, kill_ray_under, short_tmp, tiny_spec, trial_reached, wait_for,
                                       write_spec)

pytestmark = pytest.mark.slow


def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path, no_ray, fresh_store):
    epochs, trials = 4, 3                         # two trials run at a time: one waits at the kill
    spec = tiny_spec(name="resumable", epochs=epochs, num_samples=trials,
                     scheduler={"kind": "fifo"}, searcher={"kind": "random"})
    path = write_spec(tmp_path, spec)
    uri = fresh_store(tmp_path / "mlruns.db")
    ray_tmp = short_tmp()
    env = {"RAY_TMPDIR": str(ray_tmp)}
    args = ("--tracking-uri", uri, "--num-cpus", "2")
    driver = cli("sweep", str(path), "--storage", str(tmp_path / "runs"), *args, cwd=tmp_path, env=env)
    client = MlflowClient(uri)

    try:
        wait_for(trial_reached(client, "resumable", 2), 180, "a trial reached epoch 2", driver)
    finally:
        kill_group(driver)                        # the driver dies without any chance to clean up
        kill_ray_under(ray_tmp)
    parent = find_sweep(client, "resumable")
    before = load_records(client, parent.info.run_id, with_history=False)
    assert 1 <= len(before) and any(r.status == "running" for r in before)

    resumed = cli("resume", "resumable", *args, cwd=tmp_path, env=env)
    try:
        out, _ = resumed.communicate(timeout=300)
    finally:
        kill_group(resumed)
        kill_ray_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, out

    after = load_records(client, parent.info.run_id)
    assert len(after) == trials and len({r.trial_id for r in after}) == trials   # no trial lost, none twice
    assert {r.run_id for r in before} <= {r.run_id for r in after}             # runs kept, not duplicated
    assert all(r.status == "completed" and r.epoch == epochs for r in after), [(r.status, r.epoch) for r in after]
    for r in after:                                                             # each epoch logged once
        steps = [m.step for m in client.get_metric_history(r.run_id, "acc_at_0.1")]
        assert steps == list(range(1, epochs + 1))
        assert client.get_run(r.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([parent.info.experiment_id])) == 1 + trials  # one parent + one child per trial
    storage = parent.data.tags["q3r.storage"]
    url = f"sqlite:///{storage}/optuna.db"
    names = [n for n in optuna.get_all_study_names(url) if n.startswith("resumable/")]
    assert sum(len(optuna.load_study(study_name=n, storage=url).trials) for n in names) == trials


def test_an_interrupted_confirmation_resumes_without_running_a_seed_twice(tmp_path, no_ray, fresh_store):
    epochs, seeds = 4, 3                          # one configuration, 3 new seeds, two at a time: one waits at the kill
    spec = tiny_spec(name="confirming", epochs=epochs, num_samples=1, techniques={"adamw": {"lr": {"choice": [3e-3]}}},
                     scheduler={"kind": "fifo"}, searcher={"kind": "grid"}, confirm={"top": 1, "seeds": seeds})
    path = write_spec(tmp_path, spec)
    uri = fresh_store(tmp_path / "mlruns.db")
    ray_tmp = short_tmp()
    env = {"RAY_TMPDIR": str(ray_tmp)}
    args = ("--tracking-uri", uri, "--num-cpus", "2")
    driver = cli("sweep", str(path), "--storage", str(tmp_path / "runs"), *args, cwd=tmp_path, env=env)
    client = MlflowClient(uri)

    def confirmations():
        try:
            parent = find_sweep(client, "confirming")
        except Exception:  # noqa: BLE001 - the experiment does not exist yet
            return []
        return [r for r in load_records(client, parent.info.run_id, with_history=False) if r.role == "confirmation"]

    try:
        wait_for(lambda: any(r.epoch >= 2 for r in confirmations()), 240, "a confirmation run reached epoch 2", driver)
    finally:
        kill_group(driver)
        kill_ray_under(ray_tmp)
    before = confirmations()
    assert any(r.status == "running" for r in before)

    resumed = cli("resume", "confirming", *args, cwd=tmp_path, env=env)
    try:
        out, _ = resumed.communicate(timeout=300)
    finally:
        kill_group(resumed)
        kill_ray_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, out
    assert "completing the confirmation runs" in out
    after = confirmations()
    assert len(after) == seeds and len({(r.confirms, r.seed) for r in after}) == seeds  # the config x 3 seeds
    assert {r.run_id for r in before} <= {r.run_id for r in after}
    for r in after:
        assert r.status == "completed" and r.epoch == epochs
        steps = [m.step for m in client.get_metric_history(r.run_id, "acc_at_0.1")]
        assert steps == list(range(1, epochs + 1))                                    # each epoch logged once

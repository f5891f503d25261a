"""A driver killed mid-sweep, then ``q3r-tune resume``: every trial once, every MLflow run once."""
from __future__ import annotations

import shutil
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.results import load_records
from tuning.tracking.store import find_sweep

from tests.tuning.sweep_helpers import cli, kill_group, kill_ray_under, short_tmp, tiny_spec, write_spec

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path):
    spec = tiny_spec(name="resumable", epochs=6, num_samples=4,
                     scheduler={"kind": "fifo"}, searcher={"kind": "random"})
    path = write_spec(tmp_path, spec)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ray_tmp = short_tmp()
    env = {"RAY_TMPDIR": str(ray_tmp)}
    args = ("--tracking-uri", uri, "--num-cpus", "2")
    driver = cli("sweep", str(path), "--storage", str(tmp_path / "runs"), *args, cwd=tmp_path, env=env)
    client = MlflowClient(uri)

    def some_trial_is_halfway() -> bool:
        try:
            parent = find_sweep(client, "resumable")
        except Exception:  # noqa: BLE001 - the experiment does not exist yet
            return False
        return any(r.epoch >= 2 for r in load_records(client, parent.info.run_id, with_history=False))

    try:
        wait_for(some_trial_is_halfway, 180, "a trial reached epoch 2", driver)
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
    assert len(after) == 4 and len({r.trial_id for r in after}) == 4          # no trial lost, none twice
    assert {r.run_id for r in before} <= {r.run_id for r in after}             # runs kept, not duplicated
    assert all(r.status == "completed" and r.epoch == 6 for r in after), [(r.status, r.epoch) for r in after]
    for r in after:                                                             # each epoch logged once
        steps = [m.step for m in client.get_metric_history(r.run_id, "acc_at_0.1")]
        assert steps == [1, 2, 3, 4, 5, 6]
        assert client.get_run(r.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([parent.info.experiment_id])) == 5          # one parent + four children
    storage = parent.data.tags["q3r.storage"]
    url = f"sqlite:///{storage}/optuna.db"
    names = [n for n in optuna.get_all_study_names(url) if n.startswith("resumable/")]
    assert sum(len(optuna.load_study(study_name=n, storage=url).trials) for n in names) == 4


def test_an_interrupted_confirmation_resumes_without_running_a_seed_twice(tmp_path):
    spec = tiny_spec(name="confirming", epochs=5, num_samples=2, techniques={"adamw": {"lr": {"choice": [3e-3, 6e-3]}}},
                     scheduler={"kind": "fifo"}, searcher={"kind": "grid"}, confirm={"top": 2, "seeds": 2})
    path = write_spec(tmp_path, spec)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
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
    assert len(after) == 4 and len({(r.confirms, r.seed) for r in after}) == 4       # both configs x 2 seeds
    assert {r.run_id for r in before} <= {r.run_id for r in after}
    for r in after:
        assert r.status == "completed" and r.epoch == 5
        steps = [m.step for m in client.get_metric_history(r.run_id, "acc_at_0.1")]
        assert steps == [1, 2, 3, 4, 5]                                               # each epoch logged once

"""Sweeps against a real ``mlflow server`` process, and on a two-node local Ray cluster."""
from __future__ import annotations

import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from tuning import cli
from tuning.tracking.results import load_records
from tuning.spec.sweep import from_dict
from tuning.sweep.driver import run_sweep
from tuning.tracking.store import TrackingError, check_tracking, find_sweep

from tests.conftest import free_port
from tests.tuning.sweep_helpers import tiny_spec, write_spec

pytestmark = pytest.mark.slow


def test_sweep_tracks_into_a_real_mlflow_server(mlflow_server, tmp_path, ray_session):
    spec = from_dict(tiny_spec(name="served", epochs=2, num_samples=2, scheduler={"kind": "fifo"}), source="x")
    outcome = run_sweep(spec, tracking_uri=mlflow_server.url, storage=str(tmp_path / "runs"))
    client = MlflowClient(mlflow_server.url)
    parent = find_sweep(client, "served")
    records = load_records(client, parent.info.run_id)
    assert len(records) == 2 and all(r.status == "completed" for r in records)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "pareto"}
    assert outcome.parent_run_id == parent.info.run_id


def test_two_node_cluster_survives_a_worker_node_removed_mid_trial(tmp_path, no_ray, fresh_store):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    uri = fresh_store(tmp_path / "mlruns.db")
    spec = from_dict(tiny_spec(name="clustered", epochs=8, num_samples=3, scheduler={"kind": "fifo"},
                               searcher={"kind": "random"}), source="clustered.yaml")
    removed = threading.Event()

    def remove_worker_mid_trial():
        client = MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                records = load_records(client, find_sweep(client, "clustered").info.run_id, with_history=False)
            except Exception:  # noqa: BLE001 - no sweep yet
                records = []
            running = [r for r in records if r.status == "running" and r.epoch >= 1]
            if len(running) >= 2:                 # both nodes busy: one trial runs on the worker node
                cluster.remove_node(worker)
                removed.set()
                return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_worker_mid_trial, daemon=True)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        remover.start()
        outcome = run_sweep(spec, address=cluster.address, tracking_uri=uri, storage=str(tmp_path / "runs"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed.is_set(), "the worker node was never removed mid-trial"
    assert len(outcome.records) == 3
    assert all(r.status == "completed" and r.epoch == 8 for r in outcome.records), \
        [(r.trial_id, r.status, r.epoch) for r in outcome.records]


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path, capsys, no_ray):
    url = f"http://127.0.0.1:{free_port()}"          # nothing listens there
    with pytest.raises(TrackingError, match=f"MLflow tracking server {url} is unreachable"):
        check_tracking(url, timeout=2)
    path = write_spec(tmp_path, tiny_spec(name="never"))
    assert cli.main(["sweep", str(path), "--tracking-uri", url, "--storage", str(tmp_path / "runs")]) == 2
    assert "is unreachable" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()      # nothing was started


def test_missing_dataset_fails_before_any_trial(tmp_path, capsys, no_ray, fresh_store):
    spec = tiny_spec(name="nodata", data={"name": "cifar10", "data_root": "no/such/folder"})
    path = write_spec(tmp_path, spec)
    uri = fresh_store(tmp_path / "m.db")
    assert cli.main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "cifar10" in err and "no/such/folder" in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()

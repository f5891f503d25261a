"""Sweeps of the user's own training loop (``function:``) with real Ray, Optuna and MLflow on tiny work:
the example through ``q3r-tune sweep``, failing functions beside a completing one, the module shipped
to the workers of a two-node cluster."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

import q3r
from tuning import cli
from tuning.analysis.recommend import recommend
from tuning.spec.sweep import load_spec
from tuning.sweep.driver import run_sweep
from tuning.tracking.results import load_records
from tuning.tracking.store import ERROR, find_sweep

from tests.tuning.sweep_helpers import cli as cli_process, write_spec

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop"
TINY = ["--set", "num_samples=2", "--set", "epochs=2", "--set", "scheduler.grace_period=1",
        "--set", "retentions=[0.2, 1.0]"]


def records_of(uri: str, name: str):
    client = MlflowClient(uri)
    return client, load_records(client, find_sweep(client, name).info.run_id)


def test_the_example_sweeps_through_the_cli(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = cli_process("sweep", str(EXAMPLE / "sweep.yaml"), *TINY, "--tracking-uri", uri,
                       "--storage", str(tmp_path / "runs"), "--num-cpus", "2", cwd=tmp_path)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    _, records = records_of(uri, "own-loop")
    assert len(records) == 2 and all(r.status == "completed" and r.epoch == 2 for r in records), \
        [(r.technique, r.status, r.epoch) for r in records]
    for r in records:
        assert 0.0 <= r.metrics["acc@0.2"] <= r.metrics["acc@1"] + 0.2 and r.metrics["params@0.2"] < r.metrics["params@1"]
    # the recommended models: logged as files on the parent run when the sweep ended, and exported on demand
    client = MlflowClient(uri)
    parent = find_sweep(client, "own-loop").info.run_id
    logged = {a.path for a in client.list_artifacts(parent)}
    assert {"model-budget-0_2", "model-budget-0_4"} <= logged, logged
    assert cli.main(["export", "own-loop", "--budget", "0.2", "-o", str(tmp_path / "exported"), "--tracking-uri", uri,
                     "--no-mlflow"]) == 0
    rec = recommend(records, 0.2)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import digits_loop
    finally:
        sys.path.remove(str(EXAMPLE))
    model = q3r.load_lowrank(digits_loop.MLP(), tmp_path / "exported" / "model.safetensors").eval()
    assert sum(p.numel() for p in model.parameters()) == rec.point.parameters == rec.record.metrics["params@0.2"]
    _, (x_val, y_val) = digits_loop.digits(rec.record.config["train"]["seed"])
    with torch.no_grad():
        right = int((model(x_val).argmax(-1) == y_val).sum())
    assert abs(right - rec.record.metrics["acc@0.2"] * len(y_val)) <= 1 + 1e-9


LOOP = '''
import torch, torch.nn.functional as F
from digits_loop import MLP, digits


def train(trial):
    if trial.technique == "adamw":
        raise ValueError("boom in the user's loop")
    model, optimizer = trial.prepare(MLP(16))
    if trial.technique == "lorita":
        return                                          # never reports
    (x, y), (xv, yv) = digits(trial.seed)
    for epoch in trial.epochs():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        (loss + trial.extra_loss()).backward()
        optimizer.step()
        trial.report(epoch, lambda m: (m(xv).argmax(-1) == yv).float().mean().item(), loss=loss.item())
'''


def failing_spec(folder: Path, name: str, **changes) -> Path:
    shutil.copy(EXAMPLE / "digits_loop.py", folder / "digits_loop.py")
    (folder / "my_loop.py").write_text(LOOP)
    spec = {"name": name, "function": "my_loop:train", "epochs": 2, "retentions": [0.2, 1.0],
            "train": {"eval_every": 1}, "scheduler": {"kind": "fifo"}, "searcher": {"kind": "random"},
            "techniques": {"adamq3r": {"lr": 3.0e-3, "lmbda": 1.0}, "adamw": {"lr": 3.0e-3},
                           "lorita": {"lr": 3.0e-3}},
            "num_samples": 3, "max_concurrent": 2, "confirm": {"top": 0, "seeds": 0}, **changes}
    return write_spec(folder, spec)


def test_a_raising_function_fails_its_trial_and_the_sweep_goes_on(tmp_path, ray_session, fresh_store):
    code = tmp_path / "code"
    code.mkdir()
    spec = load_spec(failing_spec(code, "failing"))
    uri = fresh_store(tmp_path / "mlruns.db")
    lines: list[str] = []
    run_sweep(spec, tracking_uri=uri, storage=str(tmp_path / "runs"), log=lines.append)
    client, records = records_of(uri, "failing")
    status = {r.technique: r.status for r in records}
    assert status == {"adamq3r": "completed", "adamw": "failed", "lorita": "failed"}, status
    errors = {r.technique: client.get_run(r.run_id).data.tags.get(ERROR, "") for r in records}
    assert "ValueError: boom in the user's loop" in errors["adamw"]
    assert 'raise ValueError("boom in the user\'s loop")' in errors["adamw"]          # the user's own line
    assert "returned without calling trial.report(epoch, evaluate)" in errors["lorita"]
    assert any("trial failed: ValueError: boom in the user's loop" in line for line in lines), lines


def test_a_function_that_does_not_import_fails_before_ray_starts(tmp_path, capsys, no_ray):
    path = write_spec(tmp_path, {"name": "noimport", "function": "not_there:train", "epochs": 2,
                                 "scheduler": {"kind": "fifo"}, "techniques": {"adamw": {"lr": 1.0e-3}}, "num_samples": 1})
    assert cli.main(["sweep", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                     "--storage", str(tmp_path / "runs")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("q3r-tune")]
    assert f"function 'not_there:train': no module named 'not_there' (searched {tmp_path}" in line
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_the_module_is_shipped_to_the_workers_of_a_two_node_cluster(tmp_path, no_ray):
    """The spec's folder is on no worker's path: the workers import the copy in Ray's runtime environment."""
    code = tmp_path / "code"
    code.mkdir()
    where = tmp_path / "where.txt"
    # a module name no other test imports: a digits_loop already in sys.modules would not be shipped
    (code / "shipped_loop.py").write_text(
        "import shipped_digits_loop as digits_loop\n\n\ndef train(trial):\n"
        f"    with open({str(where)!r}, 'a') as f:\n"
        "        f.write(digits_loop.__file__ + '\\n')\n"
        "    digits_loop.train(trial)\n")
    shutil.copy(EXAMPLE / "digits_loop.py", code / "shipped_digits_loop.py")
    spec = load_spec(write_spec(code, {
        "name": "shipped", "function": "shipped_loop:train", "epochs": 1, "retentions": [0.2, 1.0],
        "train": {"eval_every": 1}, "scheduler": {"kind": "fifo"}, "searcher": {"kind": "random"},
        "techniques": {"adamw": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}}}, "num_samples": 2,
        "max_concurrent": 2, "confirm": {"top": 0, "seeds": 0}}))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    try:
        run_sweep(spec, address=cluster.address, tracking_uri=uri, storage=str(tmp_path / "runs"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    _, records = records_of(uri, "shipped")
    assert len(records) == 2 and all(r.status == "completed" for r in records)
    files = where.read_text().split()
    assert len(files) == 2 and not any(f.startswith(str(code)) for f in files), files

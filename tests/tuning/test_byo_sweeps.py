"""The examples of routes 1 and 2 on a tiny budget through real Ray, Optuna and MLflow, a recommendation
of route 2 trained again and exported, and a user's model that fails in one trial only."""
from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from q3r.lowrank_io import load_lowrank
from tuning import cli
from tuning.analysis.recommend import recommend, write_spec
from tuning.artifacts.export import export_sweep
from tuning.spec.sweep import load_spec
from tuning.sweep.driver import run_sweep
from tuning.tracking.store import ERROR
from tuning.trial import spec as config
from tuning.trial.export import load_exported
from tuning.trial.usercode import import_factory, user_code_paths

from tests.tuning.sweep_helpers import ROOT

pytestmark = pytest.mark.slow
EXAMPLES = ROOT / "examples"
TINY = ["num_samples=2", "epochs=2", "train.eval_every=1", "train.batch_size=50", "data.limit=200",
        "scheduler.kind=fifo", "confirm.top=0", "retentions=[0.2, 0.4, 1.0]", "train.collapse_patience=10"]


def sweep(spec, folder: Path):
    """Run ``spec`` with its own local Ray (the sweep ships the user's modules to it), then stop Ray."""
    try:
        return run_sweep(spec, tracking_uri=f"sqlite:///{folder / 'mlruns.db'}", storage=str(folder / "runs"),
                         num_cpus=2, tracking_wait=30, log=lambda _: None)
    finally:
        ray.shutdown()


def finished(outcome) -> list:
    return [r for r in outcome.records if r.role == "trial"]


def test_route_1_example_sweeps_a_timm_architecture_by_name(tmp_path):
    spec = load_spec(EXAMPLES / "timm_by_name" / "sweep.yaml", TINY)
    outcome = sweep(spec, tmp_path)
    records = finished(outcome)
    assert len(records) == 2 and {r.status for r in records} == {"completed"}
    run = MlflowClient(outcome.tracking_uri).get_run(records[0].run_id)
    assert run.data.params["model.kind"] == "timm" and run.data.params["model.name"] == "vit_tiny_patch16_224"
    assert all(0 < r.metrics["acc@0.2"] <= 1 for r in records)


def test_route_2_example_sweeps_a_library_class_and_its_recommendation_trains_and_exports(tmp_path, capsys):
    spec = load_spec(EXAMPLES / "library_class" / "sweep.yaml", TINY)
    assert user_code_paths(spec) == [str((EXAMPLES / "library_class" / "digits_data.py").resolve())]
    outcome = sweep(spec, tmp_path)
    records = finished(outcome)
    assert len(records) == 2 and {r.status for r in records} == {"completed"}
    rec = recommend(outcome.records, 0.4)
    write_spec(rec, tmp_path / "recommended.yaml")
    again = config.load(tmp_path / "recommended.yaml")              # the same factories, found the same way
    assert (again.model.factory, again.data.factory) == ("timm.models.mlp_mixer:MlpMixer", "digits_data:digits")
    assert again.data.code == str((EXAMPLES / "library_class").resolve())
    rc = cli.main(["train", str(tmp_path / "recommended.yaml"), "--out", str(tmp_path / "train"),
                   "--tracking-uri", outcome.tracking_uri])
    assert rc == 0 and "status: completed" in capsys.readouterr().out

    export = export_sweep(outcome.tracking_uri, spec.experiment_name, 0.4, tmp_path / "model")
    mixer = import_factory("timm.models.mlp_mixer:MlpMixer")
    fresh = mixer(num_classes=10, in_chans=1, img_size=8, patch_size=2, num_blocks=2, embed_dim=32)
    loaded = load_lowrank(fresh, tmp_path / "model" / "model.safetensors").eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), export.result.model(x), atol=1e-5)
        assert torch.allclose(load_exported(tmp_path / "model")(x), loaded(x), atol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) == export.result.parameters < export.result.dense_parameters


FLAKY = '''
from pathlib import Path
from torch import nn


def net(counter: str, num_classes: int):
    """Fails in its first three calls (a trial and Ray's two retries of it), then builds."""
    path = Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= 3:
        raise RuntimeError(f"my model cannot be built (call {calls})")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))
'''


def test_a_user_model_that_fails_fails_its_trial_with_its_exception_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "flaky_model.py").write_text(FLAKY)
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent(f"""
        name: flaky
        model: {{kind: python, factory: "flaky_model:net", kwargs: {{counter: "{tmp_path / 'calls'}"}}}}
        techniques: {{adamw: {{lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}}}
        max_concurrent: 1
    """))
    spec = load_spec(tmp_path / "sweep.yaml", TINY)
    try:
        outcome = sweep(spec, tmp_path)
    finally:
        sys.modules.pop("flaky_model", None)
    records = sorted(finished(outcome), key=lambda r: r.status)
    assert [r.status for r in records] == ["completed", "failed"]
    run = MlflowClient(outcome.tracking_uri).get_run(records[1].run_id)
    assert run.info.status == "FAILED"
    assert "RuntimeError: my model cannot be built (call 3)" in run.data.tags[ERROR]
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)

"""The compressed model, not only its recipe: ``q3r-tune export`` on a real tiny sweep (Ray, Optuna,
MLflow), reloaded in a fresh process; the models logged on the parent run; ``q3r-tune train`` in MLflow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from tuning import cli
from tuning.artifacts import export as sweep_export
from tuning.artifacts.export import find_checkpoint, log_recommended_models, model_name
from tuning.analysis.recommend import BUDGETS, recommend, recommendation_table
from tuning.tracking.results import load_records, load_sweep
from tuning.trial import spec as config
from tuning.trial.export import load_exported, read_export

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def sweep(tiny_sweep):
    """The session's shared tiny sweep (tests/conftest.py): 8 trials (4 AdamQ3R, 4 AdamW) of up to 4 epochs under
    ASHA, the best configuration of each budget confirmed with 2 new seeds."""
    return tiny_sweep


FRESH = textwrap.dedent("""
    # A fresh process: the library loader, the spec and the data; no sweep code.
    import json, sys
    from pathlib import Path
    import torch
    import q3r
    from tuning.trial.data import load_dataset
    from tuning.trial.models import build_model
    from tuning.trial.spec import load

    torch.set_num_threads(1)
    out = []
    for folder in map(Path, sys.argv[1:]):
        cfg = load(folder / "spec.yaml")
        _, val, info = load_dataset(cfg.data.name, seed=cfg.train.seed, limit=cfg.data.limit)
        model = q3r.load_lowrank(build_model(cfg.model, info), folder / "model.safetensors").eval()
        correct = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(val, batch_size=256):
                correct += (model(x).argmax(-1) == y).sum().item()
        out.append({"correct": correct, "n": len(val), "accuracy": correct / len(val),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "lowrank": sum(isinstance(m, q3r.LowRankLinear) for m in model.modules())})
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow", "optuna")
                   or (m.startswith("tuning.") and not m.startswith("tuning.trial")))
    print(json.dumps({"models": out, "sweep_modules": heavy}))
""")


@pytest.fixture(scope="session")     # session, not module: under xdist another module's tests can run
def exported(tiny_sweep, tmp_path_factory):
    """``q3r-tune export tiny --budget 0.5 -o DIR --register tiny-export-model``: (folder, its output)."""
    import contextlib
    import io

    spec, uri, outcome, folder = tiny_sweep
    out = tmp_path_factory.mktemp("exported") / "recommended"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["export", spec.experiment_name, "--budget", "0.5", "-o", str(out), "--tracking-uri", uri,
                         "--register", "tiny-export-model"])
    assert code == 0
    return out, printed.getvalue()


def test_exported_models_reproduce_the_recorded_scores_in_a_fresh_process(sweep, exported, tmp_path):
    spec, uri, outcome, folder = sweep
    _, records = load_sweep(uri, spec.experiment_name, with_history=False)
    rec = recommend(records, 0.5)
    out, printed = exported
    assert f"to {out}" in printed and "registered as 'tiny-export-model' version 1" in printed
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.safetensors", "spec.yaml"]
    cfg, info = read_export(out)
    assert info["trial_id"] == rec.record.trial_id and info["retention"] == rec.point.retention and info["budget"] == 0.5
    assert cfg.to_dict() == config.from_dict(rec.record.config).to_dict()

    # the best AdamW trial (if the recommendation is AdamQ3R, else the best AdamQ3R one) by its run id, at 0.1
    other = "adamw" if rec.record.technique == "adamq3r" else "adamq3r"
    best_other = max((r for r in records if r.technique == other and r.status == "completed"),
                     key=lambda r: r.metrics["acc@0.1"])
    out2 = tmp_path / "other"
    assert cli.main(["export", "--run", best_other.run_id, "--retention", "0.1", "-o", str(out2), "--tracking-uri", uri,
                     "--no-mlflow"]) == 0

    fresh = subprocess.run([sys.executable, "-c", FRESH, str(out), str(out2)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    result = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert result["sweep_modules"] == []
    for got, record, p in zip(result["models"], (rec.record, best_other), (rec.point.retention, 0.1)):
        level = f"{p:g}"
        # acc@p was measured with the truncated weights W_r = A B in place, the export computes (x B^T) A^T:
        # the same function up to float rounding, which could flip a sample whose top two logits tie to
        # ~1e-6. So at most one validation sample may differ (it did not in the runs so far: equal).
        print(f"{record.technique} {record.trial_id} at {level}: exported {got['correct']}/{got['n']} = "
              f"{got['accuracy']:.6f} (recorded acc@{level} {record.metrics[f'acc@{level}']:.6f}), "
              f"{got['parameters']:,} parameters (params@{level} {record.metrics[f'params@{level}']:,})")
        assert abs(got["correct"] - round(record.metrics[f"acc@{level}"] * got["n"])) <= 1, (got, record.metrics)
        assert got["parameters"] == record.metrics[f"params@{level}"]
        assert got["lowrank"] > 0
        assert got["parameters"] < record.metrics["params@1"]
    # in this process, with the harness's loader: the same model
    model = load_exported(out)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"] == info["params@p"]


def test_the_sweep_and_the_cli_logged_pytorch_models_on_the_parent_run(sweep, exported, monkeypatch):
    spec, uri, outcome, folder = sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)             # for mlflow.pytorch.load_model
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"                    # logging a model later left it as it was
    records = load_records(client, parent.info.run_id, with_history=False)
    table = recommendation_table(records, BUDGETS)
    assert table and outcome.summary["models"].keys() == {f"{row['budget']:g}" for row in table}
    # MLflow 3 keeps a logged model beside the run's artifacts, as a LoggedModel whose source run is the parent
    models = client.search_logged_models([parent.info.experiment_id],
                                         filter_string=f"source_run_id = '{parent.info.run_id}'")
    by_name = {m.name: m for m in models}
    assert {model_name(row["budget"]) for row in table} | {"model-budget-0_5"} == set(by_name)
    assert {o.model_id for o in parent.outputs.model_outputs} == {m.model_id for m in models}
    for row in table:
        logged = by_name[model_name(row["budget"])]
        files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
        assert {"MLmodel", "input_example.json", "data"} <= files
        assert logged.tags["q3r.trial_id"] == row["trial_id"] and float(logged.tags["q3r.retention"]) == row["retention"]
        model = mlflow.pytorch.load_model(f"runs:/{parent.info.run_id}/{model_name(row['budget'])}")
        assert n_params(model) == row["parameters"]
    registered = mlflow.pytorch.load_model("models:/tiny-export-model/1")
    rec = recommend(records, 0.5)
    assert n_params(registered) == rec.point.parameters
    x = torch.randn(5, 1, 8, 8)                                     # a batch size other than the input example's
    assert registered(x).shape == (5, 10)


def test_a_missing_checkpoint_is_one_clear_error(sweep, tmp_path, capsys):
    spec, uri, outcome, folder = sweep
    nowhere = tmp_path / "elsewhere"
    assert cli.main(["export", spec.experiment_name, "--budget", "0.5", "--storage", str(nowhere), "--tracking-uri",
                     uri, "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint under {nowhere}" in err and "--storage" in err
    assert cli.main(["export", spec.experiment_name, "--retention", "0.5", "--tracking-uri", uri]) == 2
    assert "--budget" in capsys.readouterr().err


def test_a_model_that_cannot_be_logged_does_not_fail_the_sweep(sweep, monkeypatch):
    spec, uri, outcome, folder = sweep
    client = MlflowClient(uri)
    records = load_records(client, outcome.parent_run_id, with_history=False)

    def missing(trial_id, storage):
        raise FileNotFoundError(f"trial {trial_id}: no checkpoint under {storage}")

    monkeypatch.setattr(sweep_export, "find_checkpoint", missing)
    lines = []
    summary = log_recommended_models(client, outcome.parent_run_id, records, log=lines.append)
    assert summary["models"] == {} and summary["models_failed"]
    assert lines and all("could not be logged: FileNotFoundError: trial" in line for line in lines)


def test_find_checkpoint_takes_the_trial_latest_also_among_confirmation_runs(tmp_path):
    storage = tmp_path / "tiny-20260101-000000"
    for trial, steps in (("train_trial_ab12cd34_3_lr=0.01_2026", (2, 3)), ("train_trial_ab12cd3_1_2026", (9,))):
        for step in steps:
            (storage / trial / f"checkpoint_{step:06d}").mkdir(parents=True)
            (storage / trial / f"checkpoint_{step:06d}" / "checkpoint.pt").write_bytes(b"")
    confirm = Path(f"{storage}-confirm") / "train_trial_1f2e3_00001_1_point=x_2026" / "checkpoint_000004"
    confirm.mkdir(parents=True)
    (confirm / "checkpoint.pt").write_bytes(b"")
    # a confirmation run's folder names the trial it confirms: it is not that trial's folder
    seed = Path(f"{storage}-confirm") / "train_trial_1f2e3_00000_0_point=lora_seed_1_confirms_ab12cd34_2026-11-24"
    (seed / "checkpoint_000007").mkdir(parents=True)
    (seed / "checkpoint_000007" / "checkpoint.pt").write_bytes(b"")
    assert find_checkpoint("ab12cd34", str(storage)) == storage / "train_trial_ab12cd34_3_lr=0.01_2026" / \
        "checkpoint_000003" / "checkpoint.pt"
    assert find_checkpoint("1f2e3_00001", str(storage)) == confirm / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint under .*tiny-20260101-000000 or .*-confirm"):
        find_checkpoint("99999999", str(storage))


def test_the_models_tracking_uri_is_put_back_as_it_was(tmp_path, monkeypatch):
    """mlflow.pytorch.log_model logs through MLflow's process-wide tracking URI: pointed at the sweep's for
    the call, then back to the URI set before (or to none set), the MLFLOW_TRACKING_URI variable too."""
    here, there = f"sqlite:///{tmp_path / 'here.db'}", f"sqlite:///{tmp_path / 'there.db'}"
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        mlflow.set_tracking_uri(here)
        with pytest.raises(RuntimeError), sweep_export._tracking_uri(there):
            assert mlflow.get_tracking_uri() == there == os.environ["MLFLOW_TRACKING_URI"]
            raise RuntimeError("logging failed")
        assert mlflow.get_tracking_uri() == here == os.environ["MLFLOW_TRACKING_URI"]
        mlflow.set_tracking_uri(None)                                  # none set
        with sweep_export._tracking_uri(there):
            assert mlflow.get_tracking_uri() == there
        assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ
    finally:
        mlflow.set_tracking_uri(before)


def test_train_logs_to_mlflow_and_its_model_exports(tmp_path, capsys, monkeypatch, fresh_store):
    spec = tmp_path / "t.yaml"
    spec.write_text(textwrap.dedent("""\
        data: {name: digits, limit: 400}
        model: {kind: vit, depth: 1, width: 16, heads: 2}
        technique: {name: adamq3r, lr: 0.005, lmbda: 0.5, target_rank: 0.2, period: 3}
        train: {epochs: 2, batch_size: 32, eval_every: 1, retentions: [0.1, 0.5, 1.0], collapse_patience: 100}
        """))
    uri, out = fresh_store(tmp_path / "m.db"), tmp_path / "out"
    assert cli.main(["train", str(spec), "--out", str(out), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train-t").experiment_id])
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["q3r.status"] == "completed" and tags["q3r.role"] == "train"
    assert tags["q3r.technique"] == "adamq3r" and Path(tags["q3r.checkpoint"]) == (out / "checkpoint.pt").resolve()
    assert json.loads(tags["q3r.config"]) == config.load(spec).to_dict()
    assert run.data.params["technique.lmbda"] == "0.5" and run.data.params["train.epochs"] == "2"
    for key in ("acc", "acc_at_0.1", "acc_at_0.5", "params_at_0.5", "targeted_at_0.1", "train_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    scores = json.loads((out / "scores.json").read_text())["metrics"]
    assert run.data.metrics["acc_at_0.5"] == scores["acc@0.5"]

    # resuming the finished folder continues the same run
    assert cli.main(["train", str(spec), "--out", str(out), "--tracking-uri", uri, "--resume"]) == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # another experiment by name
    assert cli.main(["train", str(spec), "--out", str(tmp_path / "o2"), "--tracking-uri", uri, "--set",
                     "train.epochs=1", "--experiment", "mine"]) == 0
    assert len(client.search_runs([client.get_experiment_by_name("mine").experiment_id])) == 1

    # exportable like a sweep trial: --run with a budget picks its best level within it
    target = tmp_path / "exported"
    capsys.readouterr()
    assert cli.main(["export", "--run", run.info.run_id, "--budget", "0.5", "-o", str(target), "--tracking-uri", uri,
                     "--verify"]) == 0
    printed = capsys.readouterr().out
    _, info = read_export(target)
    within = [p for p in ("0.1", "0.5") if scores[f"targeted@{p}"] <= 0.5]
    level = max(within, key=lambda p: (scores[f"acc@{p}"], -scores[f"params@{p}"]))
    assert info["level"] == level and info["budget"] == 0.5
    assert info["parameters"] == scores[f"params@{level}"] == info["recorded"][f"params@{level}"]
    assert abs(info["accuracy"] - scores[f"acc@{level}"]) <= 1 / 360 + 1e-12     # at most one validation sample
    assert "model 'model-budget-0_5'" in printed and f"on run {run.info.run_id}" in printed
    model = load_exported(target)
    assert n_params(model) == scores[f"params@{level}"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model-budget-0_5")
    assert n_params(logged) == scores[f"params@{level}"]
    # and at a level of one's choosing
    assert cli.main(["export", "--run", run.info.run_id, "--retention", "0.5", "-o", str(tmp_path / "e2"),
                     "--tracking-uri", uri, "--no-mlflow"]) == 0
    assert n_params(load_exported(tmp_path / "e2")) == scores["params@0.5"]

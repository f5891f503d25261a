"""Route 3 (the user's own loop, ``function:``) end to end through the CLI with a real MLflow store:
``q3r-tune train`` prints the export hint, ``q3r-tune export --run`` writes and logs the factors, which load
into a fresh instance of the example's model class; the recommended spec of that run reruns with
``q3r-tune train`` and scores the same."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import q3r
from tuning.analysis.recommend import recommend, write_spec
from tuning.analysis.records import SEARCH
from tuning.cli import main as cli
from tuning.tracking.results import record_of

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop"


@pytest.fixture
def example(own_loop_example):
    return own_loop_example


def train(spec: Path, out: Path, uri: str, capsys) -> tuple[dict, str]:
    """``q3r-tune train spec --out out``: (its scores.json, what it printed)."""
    assert cli(["train", str(spec), "--out", str(out), "--tracking-uri", uri]) == 0
    return json.loads((out / "scores.json").read_text()), capsys.readouterr().out


def test_train_export_and_recommendation_of_a_function_spec(example, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    spec = tmp_path / "own.yaml"
    spec.write_text(f"function: digits_loop:train\ncode_dir: {EXAMPLE}\n"
                    "technique: {name: lorita, lr: 3.0e-3}\n"
                    "train: {epochs: 2, eval_every: 1, retentions: [0.2, 1.0], device: cpu, threads: 1}\n")
    scores, printed = train(spec, tmp_path / "run", uri, capsys)
    m = scores["metrics"]
    hint = next(line for line in printed.splitlines() if "q3r-tune export --run" in line)
    run_id = hint.split("--run ")[1].split()[0]

    out = tmp_path / "exported"
    assert cli(["export", "--run", run_id, "--retention", "0.2", "-o", str(out), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "q3r.load_lowrank(<a fresh instance of the model that function digits_loop:train trains>" in printed
    assert "as artifacts model-retention-0_2/" in printed
    model = q3r.load_lowrank(example.MLP(), out / "model.safetensors").eval()
    assert sum(p.numel() for p in model.parameters()) == m["params@0.2"] < m["params@1"]
    _, (x_val, y_val) = example.digits(0)
    with torch.no_grad():
        right = int((model(x_val).argmax(-1) == y_val).sum())
    assert abs(right - m["acc@0.2"] * len(y_val)) <= 1 + 1e-9          # at most one sample flips (float rounding)
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(run_id, "model-retention-0_2")}
    assert logged == {f"model-retention-0_2/{f}" for f in ("model.safetensors", "spec.yaml", "export.json")}
    assert cli(["export", "--run", run_id, "--retention", "0.2", "-o", str(tmp_path / "r"), "--tracking-uri", uri,
                "--register", "mine"]) == 2
    assert "cannot be registered" in capsys.readouterr().err

    # the run's recommendation for a budget of 0.2 of the targeted parameters: its spec reruns the same function
    record = record_of(client, client.get_run(run_id), with_history=False)
    rec = recommend([dataclasses.replace(record, role=SEARCH)], 0.2, statuses=(record.status,))
    assert rec.point.retention == 0.2
    again, printed = train(write_spec(rec, tmp_path / "recommended.yaml"), tmp_path / "rerun", uri, capsys)
    assert "training lorita on function digits_loop:train" in printed
    assert again["metrics"]["acc@0.2"] == m["acc@0.2"] and again["metrics"]["params@0.2"] == m["params@0.2"]

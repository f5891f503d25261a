"""The export of a trial of the user's own loop (a ``function:`` spec): written from the checkpoint alone,
loaded into a fresh instance of the example's own model class with ``q3r.load_lowrank``: its parameter
count is the params@p the trial recorded, its accuracy (the example's own metric) the acc@p."""
from pathlib import Path

import pytest
import torch
from torch import nn

import q3r
from tuning.trial import spec as config
from tuning.trial.export import export_model, load_exported, read_export
from tuning.trial.ownmodel import StandIn, stand_in
from tuning.trial.recipe import CHECKPOINT, run_trial

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop"


@pytest.fixture
def example(own_loop_example):
    return own_loop_example


def own_spec(technique: str, **extra):
    return config.from_dict({"function": "digits_loop:train", "code_dir": str(EXAMPLE),
                             "technique": {"name": technique, "lr": 3e-3, "lmbda": 1.0, "target_rank": 0.2,
                                           "period": 5, **extra},
                             "train": {"epochs": 2, "eval_every": 1, "retentions": [0.2, 0.5, 1.0], "device": "cpu",
                                       "threads": 1}})


def val_correct(model, example, seed: int) -> tuple[int, int]:
    """(right, n) of ``model`` on the example's validation split: its own metric, counted."""
    _, (x_val, y_val) = example.digits(seed)
    with torch.no_grad():
        return int((model(x_val).argmax(-1) == y_val).sum()), len(y_val)


@pytest.mark.parametrize("technique", ["adamq3r", "lora", "lorita"])
def test_a_function_trial_exports_into_a_fresh_instance_of_the_users_model(technique, example, tmp_path):
    cfg = own_spec(technique)
    result = run_trial(cfg, checkpoint_dir=str(tmp_path / "run"))
    assert result.status == "completed" and result.epoch == 2
    m = result.metrics
    for p in (0.2, 0.5):
        out = export_model(cfg, tmp_path / "run" / CHECKPOINT, p, tmp_path / f"export-{p}", extra={"run": "x"},
                           expect_epoch=result.epoch)
        assert out.parameters == out.counted == m[f"params@{p:g}"]
        model = q3r.load_lowrank(example.MLP(), out.weights).eval()          # the user's class, freshly built
        assert sum(x.numel() for x in model.parameters()) == m[f"params@{p:g}"] <= m["params@1"]
        assert technique == "lora" or m[f"params@{p:g}"] < m["params@1"]   # LoRA stores its rank at every p
        assert {n for n, x in model.named_modules() if isinstance(x, q3r.LowRankLinear)} <= {"fc1", "fc2"}
        assert isinstance(model.head, nn.Linear)                            # all-but-head: the head stays whole
        right, n = val_correct(model, example, cfg.train.seed)
        # acc@p was measured with the truncated weights A B in place, the file computes (x B^T) A^T:
        # the same function up to float rounding, so at most one sample may flip
        assert abs(right - m[f"acc@{p:g}"] * n) <= 1 + 1e-9, (right, n, m)
        spec, info = read_export(out.folder)
        assert spec == cfg and info["function"] == "digits_loop:train" and info["run"] == "x"
        assert info["epoch"] == 2 and info["params@p"] == m[f"params@{p:g}"] and info["dataset"] is None
        again = load_exported(out.folder, example.MLP())
        assert val_correct(again, example, cfg.train.seed) == (right, n)


def test_the_export_of_a_function_trial_needs_the_users_model_and_its_checkpoint_state(example, tmp_path):
    cfg = own_spec("adamw")
    run_trial(cfg, checkpoint_dir=str(tmp_path / "run"))
    out = export_model(cfg, tmp_path / "run" / CHECKPOINT, 0.2, tmp_path / "export")
    with pytest.raises(RuntimeError, match="q3r.load_lowrank"):
        out.model(torch.zeros(1, 64))                                   # a stand-in: weights, no code
    with pytest.raises(ValueError, match="pass a fresh instance of it"):
        load_exported(out.folder)
    with pytest.raises(ValueError, match="verify measures the built-in accuracy"):
        export_model(cfg, tmp_path / "run" / CHECKPOINT, 0.2, tmp_path / "v", verify=True)
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    del state["export"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="carries no export state"):
        export_model(cfg, tmp_path / "old.pt", 0.2, tmp_path / "o")


def test_the_stand_in_holds_every_tensor_under_its_name_and_counts_tied_parameters_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.block = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 6, bias=False))
            self.out = nn.Linear(6, 10)
            self.out.weight = self.emb.weight                           # tied
            self.register_buffer("scale", torch.ones(3))

    model = Tied()
    targets = q3r.select_targets(model, ("block.0", "block.2"))
    saved = [{"name": t.name, "param_name": t.param_name, "row_start": t.row_start, "row_end": t.row_end}
             for t in targets]
    copy, got = stand_in(model.state_dict(), [n for n, _ in model.named_parameters()], saved)
    assert isinstance(copy, StandIn) and isinstance(copy.get_submodule("block.0"), nn.Linear)
    assert copy.get_submodule("block.2").bias is None
    assert copy.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in copy.parameters()) == sum(p.numel() for p in model.parameters())
    assert dict(copy.named_buffers()).keys() >= {"scale", "out.weight"}    # the tied copy: once, as a buffer
    assert [t.param_name for t in got] == ["block.0.weight", "block.2.weight"]
    assert q3r.parameter_counts(copy, got, 0.5) == q3r.parameter_counts(model, targets, 0.5)

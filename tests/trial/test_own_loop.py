"""The user's own training loop (a spec's ``function``): the same scores as the built-in recipe for an
equivalent loop, resume from the last checkpoint, and one-line errors for functions that fail."""
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tuning.cli import main as cli
from tuning.trial import spec as config
from tuning.trial.models import build_model
from tuning.trial.recipe import CHECKPOINT, FunctionError, load_data, run_function, run_trial
from tuning.trial.usercode import UserCodeError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop"
BASE = {"data": {"name": "digits", "limit": 256}, "model": {"kind": "vit", "depth": 1, "width": 16, "heads": 2}}
TRAIN = {"epochs": 4, "batch_size": 64, "eval_every": 2, "retentions": [0.1, 0.5, 1.0], "collapse_patience": 100}


def technique(name):
    return {"name": name, "lr": 3e-3, "lmbda": 0.5, "target_rank": 0.2, "period": 3}


def own(function, name="adamq3r", **train):
    """A trial spec that runs ``function`` of this file (code_dir: the checkout, where ``tests`` lives)."""
    return config.from_dict({"function": f"tests.trial.test_own_loop:{function}", "technique": technique(name),
                             "code_dir": str(Path(__file__).resolve().parents[2]), "train": {**TRAIN, **train}})


def same_as_builtin(trial):
    """The built-in loop written out in plain PyTorch: the built-in's data and ViT, its batches, its metric."""
    base = config.from_dict({**BASE, "train": {**TRAIN, "seed": trial.seed}})
    train_set, val_set, info = load_data(base)
    steps = math.ceil(len(train_set) / base.train.batch_size)
    model, optimizer = trial.prepare(build_model(base.model, info), steps_per_epoch=steps)
    val = DataLoader(val_set, batch_size=256)

    @torch.no_grad()
    def evaluate(m):
        m.eval()
        right = sum((m(x).argmax(-1) == y).sum().item() for x, y in val)
        return right / len(val_set)

    for epoch in trial.epochs():
        order = torch.Generator().manual_seed(trial.seed * 100_003 + epoch - 1)
        model.train()
        losses = []
        for x, y in DataLoader(train_set, batch_size=base.train.batch_size, shuffle=True, generator=order):
            loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            (loss + trial.extra_loss()).backward()
            optimizer.step()
            losses.append(loss.detach())
        trial.report(epoch, evaluate, loss=float(torch.stack(losses).sum()) / len(losses))


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss", "lorita"])
def test_an_equivalent_own_loop_scores_as_the_builtin_recipe(name):
    builtin = run_trial(config.from_dict({**BASE, "technique": technique(name), "train": TRAIN}))
    mine = run_trial(own("same_as_builtin", name))       # model.modules: all-but-head, the ViT's four
    assert [h["epoch"] for h in mine.history] == [h["epoch"] for h in builtin.history] == [2, 4]
    assert mine.status == builtin.status == "completed"
    for ours, theirs in zip(mine.history, builtin.history):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if key not in ("time_s", "status"):
                assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


class Interrupt(Exception):
    pass


def example(**train):
    return config.from_dict({"function": "digits_loop:train", "code_dir": str(EXAMPLE),
                             "technique": technique("adamq3r"),
                             "train": {"epochs": 4, "eval_every": 1, "retentions": [0.1, 1.0], "device": "cpu", **train}})


def test_resume_through_the_own_loop_continues_from_the_last_checkpoint(tmp_path):
    full = run_function(example(), checkpoint_dir=str(tmp_path / "a"))
    seen = []

    def stop_at_epoch_2(metrics):
        seen.append(metrics["epoch"])
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(FunctionError, match="Interrupt"):
        run_function(example(), report=stop_at_epoch_2, checkpoint_dir=str(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = []
    result = run_function(example(), report=resumed.append, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert [m["epoch"] for m in resumed] == [3, 4] and len(result.history) == 4
    for key, value in full.metrics.items():
        if key not in ("time_s", "status"):
            assert result.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_the_own_loop_reports_scores_at_every_retention_and_targets_all_but_the_head():
    reports = []
    result = run_function(example(epochs=2), report=reports.append)
    assert result.status == "completed" and [r["epoch"] for r in reports] == [1, 2]
    last = reports[-1]
    assert 0.5 < last["acc"] == last["acc@1"] <= 1.0 and last["acc@0.1"] <= 1.0
    # fc1 and fc2 (64 x 64; not the head) cut to rank r(0.1) = floor(0.1 * 64*64 / 128) = 3 (paper E.1.1)
    assert last["params@1"] - last["params@0.1"] == 2 * (64 * 64 - 3 * 128)


def raises(trial):
    trial.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    for epoch in trial.epochs():
        raise ValueError(f"boom at epoch {epoch}")


def never_reports(trial):
    trial.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))


def stops_early(trial):
    trial.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    trial.report(1, lambda m: 0.5)


def reports_a_string(trial):
    trial.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    trial.report(2, lambda m: "good")


@pytest.mark.parametrize("function, message", [
    ("raises", "raised ValueError: boom at epoch 1"),
    ("never_reports", "returned without calling trial.report(epoch, evaluate)"),
    ("stops_early", "returned after reporting epoch 1 of train.epochs=4"),
    ("reports_a_string", "evaluate(model) must return a float, but at retention 0.1 it returned 'good'"),
])
def test_a_failing_function_is_one_clear_error(function, message):
    with pytest.raises(FunctionError) as e:
        run_trial(own(function, "adamw"))
    assert message in str(e.value)
    if function == "raises":                 # the last lines of its traceback name the user's line
        assert 'raise ValueError(f"boom at epoch {epoch}")' in str(e.value)


@pytest.mark.parametrize("ref, message", [
    ("no_such_module:train", "no module named 'no_such_module'"),
    ("digits_loop:nothing", "has no attribute 'nothing'"),
    ("digits_loop:BATCH", "'BATCH' in module 'digits_loop' is a int, not a callable"),
])
def test_a_function_that_does_not_import_is_one_line_exit_2(tmp_path, capsys, ref, message):
    spec = tmp_path / "t.yaml"
    spec.write_text(f"function: '{ref}'\ncode_dir: {EXAMPLE}\n")
    assert cli(["train", str(spec), "--out", str(tmp_path / "out"),
                "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.db").exists()          # nothing started


def test_train_cli_finds_the_function_next_to_the_spec(tmp_path, capsys):
    (tmp_path / "my_loop.py").write_text((EXAMPLE / "digits_loop.py").read_text())
    spec = tmp_path / "t.yaml"
    spec.write_text("function: my_loop:train\ntechnique: {name: adamw, lr: 0.003}\n"
                    "train: {epochs: 2, eval_every: 1, retentions: [0.2, 1.0], device: cpu}\n")
    out = tmp_path / "out"
    assert cli(["train", str(spec), "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    printed = capsys.readouterr().out
    assert "retention   0.2: accuracy" in printed and "q3r-tune export --run" in printed
    assert config.load(out / "config.yaml").code_dir == str(tmp_path)


def test_function_specs_leave_data_and_model_out():
    with pytest.raises(config.SpecError, match="data must be left out when function is set"):
        config.from_dict({"function": "m:f", "data": {"name": "cifar10"}})
    with pytest.raises(config.SpecError, match="model may only set modules when function is set"):
        config.from_dict({"function": "m:f", "model": {"width": 8}})
    with pytest.raises(config.SpecError, match="function must be 'package.module:callable'"):
        config.from_dict({"function": "m.f"})
    assert config.from_dict({"function": "m:f"}).model.modules == ["all-but-head"]
    assert config.from_dict({"function": "m:f", "model": {"modules": ["fc1"]}}).model.modules == ["fc1"]


def test_import_errors_name_what_was_searched(tmp_path):
    from tuning.trial.usercode import import_callable

    with pytest.raises(UserCodeError, match=f"no module named 'nowhere_mod' \\(searched {tmp_path}"):
        import_callable("nowhere_mod:f", [str(tmp_path)])


def test_a_spec_gets_the_module_next_to_it_not_one_of_the_same_name_imported_before(tmp_path):
    from tuning.trial.usercode import import_callable

    for name, answer in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same_name_loop.py").write_text(f"def train(trial):\n    return {answer}\n")
    try:
        assert import_callable("same_name_loop:train", [str(tmp_path / "a")])(None) == 1
        assert import_callable("same_name_loop:train", [str(tmp_path / "b")])(None) == 2
        assert import_callable("same_name_loop:train", [str(tmp_path / "b")]) is import_callable(
            "same_name_loop:train", [str(tmp_path / "b")])                   # no reload when it is the same file
    finally:
        sys.modules.pop("same_name_loop", None)
        for name in ("a", "b"):
            if str(tmp_path / name) in sys.path:
                sys.path.remove(str(tmp_path / name))

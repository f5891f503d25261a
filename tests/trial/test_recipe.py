"""One trial end to end on digits: reports, checkpoints and resume, divergence, the train CLI."""
import json

import pytest
import torch

from tuning.trial import spec as config
from tuning.trial.recipe import CHECKPOINT, run_trial
from tuning.cli import main as cli


def tiny(technique="adamq3r", **train):
    raw = {"data": {"name": "digits", "limit": 256},
           "model": {"kind": "vit", "depth": 1, "width": 16, "heads": 2},
           "technique": {"name": technique, "lr": 3e-3, "lmbda": 0.5, "target_rank": 0.2, "period": 3},
           "train": {"epochs": 4, "batch_size": 64, "eval_every": 2, "retentions": [0.1, 0.5, 1.0],
                     "collapse_patience": 100, **train}}
    return config.from_dict(raw)


@pytest.mark.parametrize("technique", ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"])
def test_every_technique_reports_truncation_scores(technique):
    reports = []
    result = run_trial(tiny(technique), report=reports.append)
    assert result.status == "completed" and [r["epoch"] for r in reports] == [2, 4]
    last = reports[-1]
    for p in ("0.1", "0.5", "1"):
        assert 0.0 <= last[f"acc@{p}"] <= 1.0 and last[f"params@{p}"] > 0
    if technique == "lora":                  # rank-r(target_rank) factors: stored the same at every level above
        assert last["params@0.1"] < last["params@0.5"] == last["params@1"]
    else:
        assert last["params@0.1"] < last["params@0.5"] < last["params@1"]
    assert last["acc"] == last["acc@1"]
    assert "diag/mean/eff_rank" in last
    if technique in ("adamq3r", "adam_q3r_loss"):
        assert last["diag/mean/eps"] > 0 and "diag/mean/q3r" in last


class Interrupt(Exception):
    pass


def test_resume_from_checkpoint_is_identical(tmp_path):
    full = run_trial(tiny(), checkpoint_dir=str(tmp_path / "a"))

    def stop_after_first(metrics):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(tiny(), report=stop_after_first, checkpoint_dir=str(tmp_path / "b"))
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2
    resumed = run_trial(tiny(), checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert resumed.status == "completed" and len(resumed.history) == 2
    assert resumed.metrics["status"] == full.metrics["status"]
    for key, value in full.metrics.items():
        if key not in ("time_s", "status"):
            assert resumed.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_diverging_trial_stops_itself():
    result = run_trial(config.from_dict({
        "data": {"name": "digits", "limit": 128}, "model": {"depth": 1, "width": 16, "heads": 2},
        "technique": {"name": "adamw", "lr": 1e30}, "train": {"epochs": 20, "eval_every": 5}}))
    assert result.status in ("diverged", "collapsed") and result.epoch < 20


@pytest.mark.parametrize("after, stop", [(0.0, 2), (0.5, 4)])
def test_rank_collapse_stops_itself_once_enough_epochs_are_done(after, stop):
    """At chance from the first epoch: stopped after collapse_patience evaluations, not before collapse_after."""
    cfg = tiny("adamq3r", epochs=8, eval_every=1, collapse_patience=2, collapse_after=after)
    cfg.technique.lmbda, cfg.technique.lr, cfg.technique.target_rank = 1e3, 1e-2, 0.05
    reports = []
    result = run_trial(cfg, report=reports.append)
    assert result.status == "collapsed" and result.epoch == stop
    assert all(r["acc"] < 0.15 for r in reports)             # every evaluation at chance (1.5 / 10 classes)


def test_train_cli(tmp_path, capsys):
    spec = tmp_path / "t.yaml"
    config.dump(tiny("adamw"), spec)
    out = tmp_path / "out"
    assert cli(["train", str(spec), "--set", "train.epochs=2", "--set", "technique.lr=0.002", "--out", str(out),
                "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["status"] == "completed" and "acc@0.1" in scores["metrics"]
    assert config.load(out / "config.yaml").technique.lr == 0.002
    assert "retention   0.1: accuracy" in capsys.readouterr().out


def test_train_cli_bad_spec(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("technique:\n  name: adamq3r\n  lmbda: lots\n")
    assert cli(["train", str(spec)]) == 2
    assert "technique.lmbda must be a valid number, but got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("technique", ["adamq3r", "lora"])
def test_glue_finetuning_trial_from_local_model_and_tokenizer(tmp_path, technique):
    """The fine-tuning path end to end: GLUE tsv files, a local HF model directory, a local tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    words = "the a film is good bad great movie boring fun".split()
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=20,
        max_position_embeddings=40, pad_token_id=0, num_labels=2)).save_pretrained(tmp_path / "model")
    rows = ["the film is good\t1", "a bad movie\t0", "great fun\t1", "boring film\t0"] * 8
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:4]) + "\n")
    cfg = config.from_dict({
        "data": {"name": "glue", "task": "sst2", "data_root": str(tmp_path / "glue"),
                 "tokenizer": str(tmp_path / "tok"), "max_length": 8},
        "model": {"kind": "hf", "path": str(tmp_path / "model"), "modules": ["hf-encoder"]},
        "technique": {"name": technique, "lr": 1e-2, "lmbda": 0.1, "target_rank": 4, "lora_rank": 4, "finetune": True},
        "train": {"epochs": 2, "batch_size": 8, "eval_every": 1, "retentions": [0.2, 1.0], "collapse_patience": 100,
                  "schedule": "cosine", "warmup_epochs": 1}})
    reports = []
    result = run_trial(cfg, report=reports.append)
    assert result.status == "completed" and len(reports) == 2
    assert 0.0 <= reports[-1]["acc@0.2"] <= 1.0 and reports[-1]["params@0.2"] < reports[-1]["params@1"]


def test_train_cli_missing_dataset_is_one_clear_error(tmp_path, capsys):
    spec = tmp_path / "c.yaml"
    spec.write_text(f"data:\n  name: cifar10\n  data_root: {tmp_path / 'nowhere'}\n")
    assert cli(["train", str(spec), "--out", str(tmp_path / "out"), "--tracking-uri",
                f"sqlite:///{tmp_path / 'mlruns.db'}"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "download" in err


@pytest.mark.parametrize("technique", ["adamq3r", "adam_q3r_loss"])
def test_spec_bank_options_reach_the_operators(technique, monkeypatch):
    from tuning.trial import recipe
    from q3r.schedules import GeometricEps

    built = []
    real = recipe.build_technique
    monkeypatch.setattr(recipe, "build_technique", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    cfg = tiny(technique, epochs=1, eval_every=1)
    cfg.technique.svd, cfg.technique.eps_schedule = "exact", "geometric"
    assert run_trial(cfg).status == "completed"
    (bank,) = built[0].banks()
    assert bank.svd == "exact" and isinstance(bank.schedule, GeometricEps)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_gradients_are_clipped_on_every_device_as_the_spec_says(clip, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, *a, **k:
                        calls.append(max_norm) or real(params, max_norm, *a, **k))
    cfg = tiny("adamw", epochs=1)
    cfg.train.grad_clip = clip
    run_trial(cfg)
    if clip is None:
        assert calls == []
    else:                                             # on this CPU too: every step, at the spec's norm
        assert len(calls) == 4 and set(calls) == {clip}


def test_linear_eps_schedule_reaches_its_floor_at_the_last_reweighting():
    from tuning.trial.recipe import technique_options

    cfg = tiny("adamq3r")                                   # 4 epochs x 4 steps, period 3: 6 reweightings
    cfg.technique.eps_schedule = "linear"
    assert technique_options(cfg.technique, 16) == {"eps_schedule": {"name": "linear", "steps": 5}, "svd": "warm"}
    result = run_trial(cfg)
    assert result.status == "completed"
    assert result.metrics["diag/mean/eps"] == pytest.approx(1e-5, rel=1e-5)
    cfg.technique.eps_steps = 46875                         # the published README's N
    assert technique_options(cfg.technique, 16)["eps_schedule"] == {"name": "linear", "steps": 46875}
    assert technique_options(tiny("lorita").technique, 16) == {"lorita_form": "input"}

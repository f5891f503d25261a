"""tuning.trial.export: a trained trial's checkpoint exported truncated and factorized, loaded back
from its folder with the spec alone: the recorded params@p and acc@p, for every technique."""
import json

import pytest
import torch
from torch.utils.data import DataLoader

import q3r
from tuning.trial import spec as config
from tuning.trial.evaluation import accuracy
from tuning.trial.export import export_model, load_exported, read_export
from tuning.trial.recipe import CHECKPOINT, load_data, run_trial

from tests.trial.test_recipe import tiny


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("technique", ["adamq3r", "adamw", "lora", "lorita"])
def test_export_reproduces_the_recorded_scores(technique, tmp_path):
    cfg = tiny(technique)
    result = run_trial(cfg, checkpoint_dir=str(tmp_path / "run"))
    m = result.metrics
    _, val_set, _ = load_data(cfg)
    for p in (0.1, 0.5):
        out = export_model(cfg, tmp_path / "run" / CHECKPOINT, p, tmp_path / f"export-{p}", extra={"run": "x"},
                           expect_epoch=result.epoch, verify=True)
        assert out.parameters == out.counted == m[f"params@{p:g}"] <= m["params@1"]
        assert technique == "lora" or m[f"params@{p:g}"] < m["params@1"]   # LoRA stores its rank at every p
        loaded = load_exported(out.folder)
        assert n_params(loaded) == m[f"params@{p:g}"]
        assert sum(isinstance(x, q3r.LowRankLinear) for x in loaded.modules()) == 4      # qkv, proj, fc1, fc2
        acc = accuracy(loaded, DataLoader(val_set, batch_size=256), torch.device("cpu"))
        n = len(val_set)        # the truncated dense weights vs the factor pair: at most one sample may flip
        assert abs(acc - m[f"acc@{p:g}"]) * n <= 1 + 1e-9 and abs(out.info["accuracy"] - acc) * n <= 1 + 1e-9
        spec, info = read_export(out.folder)
        assert spec == cfg and info["run"] == "x" and info["epoch"] == result.epoch == 4
        assert info["parameters"] == m[f"params@{p:g}"] and info["dataset"]["num_classes"] == 10
        assert out.example.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="epoch 4, but the scores it should reproduce were recorded at epoch 2"):
        export_model(cfg, tmp_path / "run" / CHECKPOINT, 0.1, tmp_path / "no", expect_epoch=2)
    assert not (tmp_path / "no").exists()


def test_export_of_a_finetuned_hugging_face_encoder(tmp_path):
    """Fine-tuning (Delta W on frozen weights, merged): the exported encoder loads from the spec's local model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    words = "the a film is good bad great movie boring fun".split()
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
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
        "technique": {"name": "adamq3r", "lr": 1e-2, "lmbda": 0.1, "target_rank": 4, "finetune": True},
        "train": {"epochs": 1, "batch_size": 8, "retentions": [0.2, 1.0], "collapse_patience": 100}})
    result = run_trial(cfg, checkpoint_dir=str(tmp_path / "run"))
    out = export_model(cfg, tmp_path / "run" / CHECKPOINT, 0.2, tmp_path / "export", verify=True)
    assert out.parameters == result.metrics["params@0.2"] and out.example is None
    loaded = load_exported(out.folder)
    assert n_params(loaded) == result.metrics["params@0.2"]
    assert isinstance(loaded.roberta.encoder.layer[0].attention.self.query, q3r.LowRankLinear)
    _, val_set, _ = load_data(cfg)
    batch = next(iter(DataLoader(val_set, batch_size=4)))
    batch.pop("labels")
    torch.testing.assert_close(loaded(**batch).logits, out.model(**batch).logits)
    assert json.loads((out.folder / "export.json").read_text())["accuracy"] == result.metrics["acc@0.2"]

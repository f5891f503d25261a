"""Fine-tuning: Q3R on Delta W of a Hugging Face encoder, the digits class subset, model.init, and
scoring with the update truncated (W0 + [W - W0]_r)."""
import math

import pytest
import torch
import torch.nn.functional as F

from q3r.delta import DeltaSpectra
from q3r.targets import select_targets
from tuning.trial import spec as config
from tuning.trial.data import DatasetError, load_dataset
from tuning.trial.models import build_hf_classifier
from tuning.trial.recipe import run_trial, technique_options
from tuning.trial.techniques import build_technique


def tiny_encoder_folder(path):
    """A randomly initialised BERT-style encoder built from a config and saved as a local model folder."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=40,
        max_position_embeddings=16, num_labels=2)).save_pretrained(path)
    return path


def token_task(n=256, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 40, (n, length), generator=g)
    labels = ((ids[:, 0] < 21) ^ (ids[:, 1] % 2 == 0)).long()    # needs the first two tokens
    return ids, labels


def finetune_tail_energy(folder, lmbda, rank=2, steps=90):
    """Fine-tune the encoder from ``folder`` with AdamQ3R on Delta W; the mean tail energy of Delta W
    (share of ||Delta W||^2 beyond the top ``rank``) over the encoder's matrices, and the last loss."""
    model = build_hf_classifier(str(folder), 2)                   # the local-folder path, weights loaded
    targets = select_targets(model, "hf-encoder")
    base = {t.name: t.weight.detach().clone() for t in targets}
    opts = technique_options(config.TechniqueSpec(name="adamq3r", finetune=True, period=3), steps)
    tech = build_technique("adamq3r", model, modules="hf-encoder", lr=3e-3, lmbda=lmbda, target_rank=rank,
                           period=3, finetune=True, **opts)
    ids, labels = token_task()
    torch.manual_seed(1)
    for step in range(steps):
        i = torch.randint(0, len(ids), (32,))
        loss = F.cross_entropy(tech.model(input_ids=ids[i]).logits, labels[i])
        tech.optimizer.zero_grad()
        loss.backward()
        tech.optimizer.step()
    dense = tech.dense_model()
    spectra = DeltaSpectra(select_targets(dense, "hf-encoder"), base)
    tails = [1.0 - spectra.energy(t.name, rank) for t in spectra.targets]
    return sum(tails) / len(tails), loss.item()


@pytest.mark.mutation_slow                      # ~5 s
def test_q3r_shrinks_the_tail_energy_of_delta_w_on_a_tiny_hf_encoder(tmp_path):
    folder = tiny_encoder_folder(tmp_path / "encoder")
    assert technique_options(config.TechniqueSpec(name="adamq3r", finetune=True, period=3), 90)["eps_schedule"] \
        == {"name": "warmup", "reweightings": 30}                # the fine-tuning default: every reweighting
    tail_q3r, loss_q3r = finetune_tail_energy(folder, lmbda=10.0)
    tail_plain, loss_plain = finetune_tail_energy(folder, lmbda=0.0)
    assert math.isfinite(loss_q3r) and math.isfinite(loss_plain)
    assert tail_plain > 0.1                                      # unregularized: 0.127 beyond rank 2
    assert tail_q3r < 0.5 * tail_plain, (tail_q3r, tail_plain)   # measured 0.032 (0.25x)


def test_default_eps_rule_is_warmup_when_finetuning_and_the_papers_otherwise():
    t = config.TechniqueSpec(name="adam_q3r_loss", period=5)
    assert technique_options(t, 100)["eps_schedule"] == "paper"
    t = config.TechniqueSpec(name="adam_q3r_loss", period=5, finetune=True)
    assert technique_options(t, 100)["eps_schedule"] == {"name": "warmup", "reweightings": 20}
    t = config.TechniqueSpec(name="adamq3r", period=5, finetune=True, eps_warmup=12)
    assert technique_options(t, 100)["eps_schedule"] == {"name": "warmup", "reweightings": 3}
    t = config.TechniqueSpec(name="adamq3r", period=5, finetune=True, eps_schedule="paper")
    assert technique_options(t, 100)["eps_schedule"] == "paper"


def test_digits_class_subset_is_relabelled_and_checked():
    train, val, info = load_dataset("digits", classes=[7, 5])
    assert info.num_classes == 2
    _, _, full = load_dataset("digits")
    assert full.num_classes == 10
    labels = train.tensors[1]
    assert set(labels.tolist()) == {0, 1}
    all_train, _, _ = load_dataset("digits")
    x_all, y_all = all_train.tensors
    assert len(labels) == int(((y_all == 7) | (y_all == 5)).sum())   # the same split, filtered
    assert torch.equal(train.tensors[0][labels == 0], x_all[y_all == 7])   # same images, same preprocessing
    with pytest.raises(DatasetError, match="distinct digits"):
        load_dataset("digits", classes=[3, 3])
    with pytest.raises(DatasetError, match="digits only"):
        load_dataset("cifar10", classes=[1], data_root="/nowhere")


def test_finetuning_trial_from_an_init_checkpoint_scores_the_truncated_update(tmp_path):
    from safetensors.torch import save_file

    from tuning.trial.models import build_model
    from tuning.trial.data import DatasetInfo

    model_spec = config.ModelSpec(kind="vit", depth=1, width=16)
    torch.manual_seed(5)
    pre = build_model(model_spec, DatasetInfo("digits", 8, 1, 3))
    save_file(pre.state_dict(), str(tmp_path / "pre.safetensors"))
    cfg = config.from_dict({
        "data": {"name": "digits", "classes": [4, 5, 6]},
        "model": {"kind": "vit", "depth": 1, "width": 16, "init": str(tmp_path / "pre.safetensors")},
        "technique": {"name": "adamq3r", "lr": 3e-3, "lmbda": 1.0, "target_rank": 2, "finetune": True},
        "train": {"epochs": 2, "batch_size": 64, "eval_every": 2, "retentions": [0.125, 1.0], "threads": 1}})
    result = run_trial(cfg)
    m = result.metrics
    assert result.status == "completed" and m["acc"] > 0.5
    # the update of a 16 x 16 matrix at p = 0.125 keeps r = 1: 32 numbers instead of 256 (x 4 for q, k, v, proj;
    # fc1 64 x 16 and fc2 16 x 64 keep r = 1: 80 numbers instead of 1024)
    dense = sum(p.numel() for p in pre.parameters())
    assert m["params@0.125"] == dense - (4 * 256 + 2 * 1024) + (4 * 32 + 2 * 80)
    assert m["params@0.125"] < m["params@1"] <= dense        # the whole update, stored as factors where smaller
    bad = cfg.model_copy(deep=True)
    bad.data.classes = [1, 2, 3, 4]
    with pytest.raises(ValueError, match="does not fit the model"):
        run_trial(bad)

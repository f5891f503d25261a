"""Techniques by name: each trains, and dense_model() computes what the trained model computes."""
import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import q3r
from q3r.layers import DeltaLinear, ProductLinear
from q3r.techniques import build_technique, list_techniques


def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def train(tech, steps=15):
    x, y = batch()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(tech.model(x), y)
        total = loss + tech.extra_loss()
        tech.optimizer.zero_grad()
        total.backward()
        tech.optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"])
@pytest.mark.parametrize("finetune", [False, True])
def test_trains_and_dense_model_matches(name, finetune):
    if finetune and name == "lorita":
        pytest.skip("LoRITa is a pre-training baseline")
    tech = build_technique(name, vit(), lr=3e-3, lmbda=0.1, target_rank=0.25, period=3, finetune=finetune)
    losses = train(tech)
    assert losses[-1] < losses[0]
    dense = tech.dense_model()
    tech.model.eval(); dense.eval()
    x, _ = batch()
    torch.testing.assert_close(dense(x), tech.model(x), atol=1e-5, rtol=1e-4)
    reference = vit()
    for t in q3r.select_targets(reference):
        layer = dense.get_submodule(t.param_name[: -len(".weight")])
        assert type(layer) is nn.Linear and layer.weight.shape == t.param.shape
    q3r.select_targets(dense)                                   # the scoring path finds every matrix


def test_lora_pretraining_factor_ranks():
    tech = build_technique("lora", vit(), target_rank=0.25)
    qkv = tech.model.blocks[0].attn.qkv
    r_sq, r_fc = q3r.target_rank((16, 16), 0.25), q3r.target_rank((64, 16), 0.25)
    assert [tuple(qkv.A[k].shape) for k in qkv.order] == [(16, r_sq)] * 3
    fc1 = tech.model.blocks[0].mlp.fc1
    assert sum(p.numel() for n, p in fc1.named_parameters() if not n.startswith("bias")) == r_fc * (64 + 16)


def test_lorita_product_starts_at_the_original_weight():
    model = vit()
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    tech = build_technique("lorita", model, depth=3, alpha=0.1)
    layer = tech.model.blocks[0].mlp.fc1
    assert isinstance(layer, ProductLinear) and len(layer.factors) == 3
    torch.testing.assert_close(layer.merged_weight(), before)
    assert tech.optimizer.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss"])
def test_q3r_finetuning_regularizes_delta_w_only(name):
    model = vit()
    w0 = model.blocks[0].attn.qkv.weight.detach().clone()
    embed0 = model.patch_embed.proj.weight.detach().clone()
    tech = build_technique(name, model, lr=1e-2, lmbda=0.1, target_rank=2, period=2, finetune=True)
    train(tech, steps=6)
    layer = tech.model.blocks[0].attn.qkv
    assert isinstance(layer, DeltaLinear)
    assert torch.equal(layer.base_layer.weight, w0) and torch.equal(model.patch_embed.proj.weight, embed0)
    assert layer.delta.abs().sum() > 0
    ops = {}
    for bank in tech.banks():
        ops.update(bank.operators())
    assert ops["blocks.0.attn.qkv[q]"].shape == (16, 16)        # a part of Delta W, not the frozen weight
    assert all(0 < op.eps < float("inf") for op in ops.values())  # reweighted once Delta W moved


def test_adam_q3r_loss_extra_loss_is_differentiable():
    tech = build_technique("adam_q3r_loss", vit(), lmbda=0.5)
    extra = tech.extra_loss()
    assert extra.requires_grad and extra.item() > 0


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss"])
def test_state_dict_round_trip_resumes_identically(name):
    kw = dict(lr=3e-3, lmbda=0.2, target_rank=0.25, period=4)
    a = build_technique(name, vit(), **kw)
    train(a, steps=5)
    model_state = {k: v.clone() for k, v in a.model.state_dict().items()}
    tech_state = copy.deepcopy(a.state_dict())      # torch optimizers hand out live tensors
    train(a, steps=6)
    b = build_technique(name, vit(), **kw)
    b.model.load_state_dict(model_state)
    b.load_state_dict(tech_state)
    train(b, steps=6)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_unknown_technique_lists_names():
    with pytest.raises(ValueError, match=r"unknown technique 'sgd'; known: \['adam_q3r_loss', 'adamq3r'"):
        build_technique("sgd", vit())
    assert list_techniques() == ["adam_q3r_loss", "adamq3r", "adamw", "lora", "lorita"]


@pytest.mark.parametrize("name", ["lora", "adamq3r"])
def test_finetuning_a_hugging_face_encoder(name):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=40, num_labels=3)
    model = RobertaForSequenceClassification(cfg).eval()
    frozen = model.roberta.encoder.layer[0].attention.self.query.weight.detach().clone()
    tech = build_technique(name, model, modules="hf-encoder", lr=1e-2, target_rank=2, lora_rank=4, finetune=True)
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(5):
        loss = F.cross_entropy(tech.model(input_ids=ids).logits, y) + tech.extra_loss()
        tech.optimizer.zero_grad(); loss.backward(); tech.optimizer.step()
    dense = tech.dense_model().eval()
    torch.testing.assert_close(dense(input_ids=ids).logits, tech.model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert len(q3r.select_targets(dense, "hf-encoder")) == 6
    base = tech.model.roberta if name == "adamq3r" else tech.model.base_model.model.roberta
    query = base.encoder.layer[0].attention.self.query
    assert torch.equal(query.base_layer.weight, frozen)

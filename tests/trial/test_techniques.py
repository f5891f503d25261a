"""Techniques by name: each trains, and dense_model() computes what the trained model computes."""
import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import q3r
from tuning.trial.layers import DeltaLinear, ProductLinear
from tuning.trial.techniques import build_technique, list_techniques
from q3r.truncation import LowRankLinear

NAMES = ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"]
TARGETED = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]


def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)


def roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=40, num_labels=3)
    return RobertaForSequenceClassification(cfg).eval()


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


def frozen_weights(model):
    """Pretrained weights of the targeted Linears and the patch embedding, as copies."""
    out = {name: model.get_submodule(name).weight.detach().clone() for name in TARGETED}
    out["patch_embed"] = model.patch_embed.proj.weight.detach().clone()
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("finetune", [False, True])
def test_trains_and_dense_model_matches(name, finetune):
    tech = build_technique(name, vit(), lr=3e-3, lmbda=0.1, target_rank=0.25, period=3, finetune=finetune)
    losses = train(tech)
    assert losses[-1] < losses[0]
    dense = tech.dense_model()
    tech.model.eval(); dense.eval()
    x, _ = batch()
    torch.testing.assert_close(dense(x), tech.model(x), atol=1e-5, rtol=1e-5)
    reference = vit()
    for lname in TARGETED:
        layer = dense.get_submodule(lname)
        assert type(layer) is nn.Linear and layer.weight.shape == reference.get_submodule(lname).weight.shape
    assert len(q3r.select_targets(dense)) == 6                  # the scoring path finds every matrix
    replaced = name in ("lora", "lorita") or (finetune and name != "adamw")
    assert (dense is tech.model) == (not replaced)


def test_lora_pretraining_factor_ranks():
    tech = build_technique("lora", vit(), target_rank=0.25)
    r_sq, r_fc = q3r.target_rank((16, 16), 0.25), q3r.target_rank((64, 16), 0.25)
    qkv = tech.model.blocks[0].attn.qkv
    assert isinstance(qkv, LowRankLinear) and len(qkv.order) == 3 and not qkv.dense
    for k in qkv.order:                                         # three factor pairs, one per d x d part
        assert qkv.A[k].shape == (16, r_sq) and qkv.B[k].shape == (r_sq, 16)
    assert sum(p.numel() for n, p in qkv.named_parameters() if n != "bias") == 3 * r_sq * (16 + 16)
    fc1 = tech.model.blocks[0].mlp.fc1
    assert sum(p.numel() for n, p in fc1.named_parameters() if n != "bias") == r_fc * (64 + 16)
    merged = tech.dense_model().blocks[0].attn.qkv.weight
    for i, k in enumerate(qkv.order):                           # each part is A @ B, rank r
        torch.testing.assert_close(merged[16 * i:16 * (i + 1)], qkv.A[k] @ qkv.B[k])
        assert torch.linalg.matrix_rank(merged[16 * i:16 * (i + 1)].detach()) == r_sq


def test_lora_pretraining_starts_at_the_truncated_init():
    model = vit()
    W = model.blocks[0].mlp.fc2.weight.detach().clone()
    tech = build_technique("lora", model, target_rank=0.25)
    r = q3r.target_rank(W.shape, 0.25)
    U, S, Vh = torch.linalg.svd(W)
    expected = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    torch.testing.assert_close(tech.dense_model().blocks[0].mlp.fc2.weight, expected, atol=1e-6, rtol=1e-5)


def test_lorita_is_built_as_its_authors_built_it():
    """Input side: W = W_D ... W_1, W_1..W_{D-1} (d_in x d_in), W_D (d_out x d_in) with the bias, every
    factor a fresh nn.Linear init (uniform in +-1/sqrt(d_in)); Q, K and V each their own product."""
    torch.manual_seed(0)
    tech = build_technique("lorita", vit(), depth=3, alpha=0.1, weight_decay=0.01)
    qkv, fc1, fc2 = tech.model.blocks[0].attn.qkv, tech.model.blocks[0].mlp.fc1, tech.model.blocks[0].mlp.fc2
    assert all(isinstance(tech.model.get_submodule(n), ProductLinear) for n in TARGETED)
    assert [[tuple(f.shape) for f in p] for p in qkv.products] == [[(16, 16)] * 3] * 3    # Q, K, V each
    assert [tuple(f.shape) for f in fc1.products[0]] == [(16, 16), (16, 16), (64, 16)]   # fc1: 16 -> 64
    assert [tuple(f.shape) for f in fc2.products[0]] == [(64, 64), (64, 64), (16, 64)]   # fc2: 64 -> 16
    for layer, d_in in ((qkv, 16), (fc1, 16), (fc2, 64)):
        bound = 1 / d_in ** 0.5
        for f in layer.factors:
            assert f.abs().max() <= bound and f.abs().max() > 0.8 * bound                 # U(-b, b), filled
        assert layer.bias.abs().max() <= bound
        W = layer.products[0]
        torch.testing.assert_close(layer.merged_weight()[: W[-1].shape[0]], W[2] @ W[1] @ W[0])
    x = torch.randn(5, 16)
    torch.testing.assert_close(fc1(x), x @ fc1.products[0][0].T @ fc1.products[0][1].T @ fc1.products[0][2].T
                               + fc1.bias)
    factors, others = tech.optimizer.param_groups
    assert factors["weight_decay"] == 0.1 and others["weight_decay"] == 0.01
    assert {id(p) for p in factors["params"]} == {id(f) for n in TARGETED for f in tech.model.get_submodule(n).factors}


def test_lorita_output_form_starts_at_the_original_weight():
    model = vit()
    before = {name: model.get_submodule(name).weight.detach().clone() for name in TARGETED}
    tech = build_technique("lorita", model, depth=3, lorita_form="output")
    for name in TARGETED:
        torch.testing.assert_close(tech.model.get_submodule(name).merged_weight(), before[name])
    fc1 = tech.model.blocks[0].mlp.fc1
    assert [tuple(f.shape) for f in fc1.products[0]] == [(64, 16), (64, 64), (64, 64)]


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss"])
def test_q3r_finetuning_regularizes_delta_w_only(name):
    model = vit()
    before = frozen_weights(model)
    head0 = model.head.weight.detach().clone()
    tech = build_technique(name, model, lr=1e-2, lmbda=0.1, target_rank=2, period=2, finetune=True)
    train(tech, steps=6)
    for lname in TARGETED:
        layer = tech.model.get_submodule(lname)
        assert isinstance(layer, DeltaLinear)
        assert torch.equal(layer.base_layer.weight, before[lname])
        assert layer.delta.abs().sum() > 0
    assert torch.equal(model.patch_embed.proj.weight, before["patch_embed"])
    assert not torch.equal(model.head.weight, head0)               # the classifier head trains
    bank_targets = [t for bank in tech.banks() for t in bank.targets]
    deltas = {id(tech.model.get_submodule(n).delta) for n in TARGETED}
    assert len(bank_targets) == 6 and all(id(t.param) in deltas for t in bank_targets)
    ops = {}
    for bank in tech.banks():
        ops.update(bank.operators())
    assert ops["blocks.0.attn.qkv[q]"].shape == (16, 16)        # a part of Delta W, not the frozen weight
    assert ops["blocks.0.mlp.fc1"].shape == (64, 16)
    assert all(0 < op.eps < float("inf") for op in ops.values())  # reweighted once Delta W moved


def test_lora_finetuning_freezes_pretrained_weights():
    model = vit()
    before = frozen_weights(model)
    tech = build_technique("lora", model, lr=1e-2, lora_rank=2, finetune=True)
    train(tech, steps=5)
    base = tech.model.base_model.model
    for lname in TARGETED:
        layer = base.get_submodule(lname)
        assert torch.equal(layer.base_layer.weight, before[lname])
        assert layer.lora_A["default"].weight.shape[0] == 2 and layer.lora_A["default"].weight.shape[1] == layer.in_features
    assert torch.equal(base.patch_embed.proj.weight, before["patch_embed"])
    trainable = {n for n, p in tech.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or ".head." in n for n in trainable) and any(".head." in n for n in trainable)


def test_adam_q3r_loss_extra_loss_is_differentiable():
    tech = build_technique("adam_q3r_loss", vit(), lmbda=0.5)
    extra = tech.extra_loss()
    assert extra.requires_grad and extra.item() > 0
    torch.testing.assert_close(extra, 0.5 * tech.penalty.value())
    extra.backward()
    assert tech.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert tech.model.head.weight.grad is None                  # not regularized


@pytest.mark.parametrize("name", ["adamq3r", "adam_q3r_loss"])
@pytest.mark.parametrize("finetune", [False, True])
def test_state_dict_round_trip_resumes_identically(name, finetune):
    kw = dict(lr=3e-3, lmbda=0.2, target_rank=0.25, period=4, weight_decay=0.01, finetune=finetune)
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
    assert list_techniques() == sorted(NAMES)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr=0.0"), (dict(lmbda=-1.0), "lmbda=-1.0"), (dict(target_rank=1.5), "target_rank=1.5"),
    (dict(target_rank=0), "target_rank=0"), (dict(period=0), "period=0"), (dict(depth=0), "depth=0"),
    (dict(alpha=-0.1), "alpha=-0.1"), (dict(lora_rank=0), "lora_rank=0"), (dict(weight_decay=-1), "weight_decay=-1"),
    (dict(modules=("nope",)), "modules=('nope',)"), (dict(bogus=1), "bogus"),
])
def test_bad_hyperparameters_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        build_technique("adamq3r", vit(), **kwargs)


def test_extra_options_reach_the_operator_bank():
    tech = build_technique("adam_q3r_loss", vit(), svd="exact", oversample=2)
    assert tech.penalty.bank.svd == "exact" and tech.penalty.bank.oversample == 2


@pytest.mark.parametrize("name", ["lora", "adamq3r", "adam_q3r_loss"])
def test_finetuning_a_hugging_face_encoder(name):
    model = roberta()
    frozen = model.roberta.encoder.layer[0].attention.self.query.weight.detach().clone()
    classifier0 = model.classifier.out_proj.weight.detach().clone()
    tech = build_technique(name, model, modules="hf-encoder", lr=1e-2, target_rank=2, lora_rank=4, finetune=True)
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(tech.model(input_ids=ids).logits, y)
        tech.optimizer.zero_grad(); (loss + tech.extra_loss()).backward(); tech.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    dense = tech.dense_model().eval()
    torch.testing.assert_close(dense(input_ids=ids).logits, tech.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert len(q3r.select_targets(dense, "hf-encoder")) == 6
    assert type(dense.classifier.dense) is nn.Linear              # the head's "dense" is not treated
    base = tech.model.base_model.model.roberta if name == "lora" else tech.model.roberta
    query = base.encoder.layer[0].attention.self.query
    assert torch.equal(query.base_layer.weight, frozen)
    assert not torch.equal(dense.classifier.out_proj.weight, classifier0)   # the head trains


START_AT_PRETRAINED = [("adamq3r", {}), ("adam_q3r_loss", {}), ("lorita", {"lorita_form": "output", "depth": 3}),
                       ("lora", {"lora_rank": 2})]


@pytest.mark.parametrize("name, options", START_AT_PRETRAINED, ids=[n for n, _ in START_AT_PRETRAINED])
def test_a_fresh_finetuning_model_computes_what_the_pretrained_model_computes(name, options):
    """Issue 23: the update starts at zero (Delta W = 0, identity factors, peft's B = 0), so before any
    step the fine-tuning model and its merged dense model give the pretrained outputs, in float64."""
    model = vit().double().eval()
    x = batch()[0].double()
    with torch.no_grad():
        expected = model(x)
        tech = build_technique(name, model, target_rank=2, finetune=True, **options)
        replaced = [tech.model.get_submodule(n) for n, _ in tech.model.named_modules()
                    if n.endswith(tuple(TARGETED))]
        assert replaced and not any(type(m) is nn.Linear for m in replaced)     # the layers were replaced
        if name != "lora":
            assert all(isinstance(m, DeltaLinear if name != "lorita" else ProductLinear) for m in replaced)
        torch.testing.assert_close(tech.model(x), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(tech.dense_model()(x), expected, rtol=0, atol=1e-12)

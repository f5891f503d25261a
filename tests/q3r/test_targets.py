"""select_targets on real models: timm ViT (fused qkv split into Q, K, V) and a tiny RoBERTa."""
import pytest
import torch
from torch import nn

from q3r.ranks import target_rank
from q3r.targets import Target, as_targets, select_targets

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                             num_classes=10, depth=2)


@pytest.fixture(scope="module")
def roberta():
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    return transformers.RobertaForSequenceClassification(cfg)


def test_vit_targets(vit):
    targets = select_targets(vit)
    names = [t.name for t in targets]
    expected = []
    for b in range(2):
        expected += [f"blocks.{b}.attn.qkv[q]", f"blocks.{b}.attn.qkv[k]", f"blocks.{b}.attn.qkv[v]",
                     f"blocks.{b}.attn.proj", f"blocks.{b}.mlp.fc1", f"blocks.{b}.mlp.fc2"]
    assert sorted(names) == sorted(expected)
    assert len(set(names)) == len(names)
    assert not any("head" in n for n in names)
    assert not any("patch_embed" in n for n in names)          # a Conv2d named proj is not a target
    head_w = vit.head.weight
    assert all(t.param is not head_w for t in targets)

    by_name = {t.name: t for t in targets}
    params = dict(vit.named_parameters())
    for b in range(2):
        qkv = vit.blocks[b].attn.qkv.weight
        assert qkv.shape == (576, 192)
        for i, part in enumerate("qkv"):
            t = by_name[f"blocks.{b}.attn.qkv[{part}]"]
            assert t.shape == (192, 192)
            assert t.weight.shape == (192, 192)
            assert t.param is qkv
            assert t.param_name == f"blocks.{b}.attn.qkv.weight"
            assert params[t.param_name] is qkv
            assert t.weight.data_ptr() == qkv[i * 192:(i + 1) * 192].data_ptr()
            assert torch.equal(t.weight, qkv[i * 192:(i + 1) * 192])
            assert target_rank(t.shape, 0.2) == 19
        assert by_name[f"blocks.{b}.attn.proj"].shape == (192, 192)
        assert by_name[f"blocks.{b}.mlp.fc1"].shape == (768, 192)
        assert by_name[f"blocks.{b}.mlp.fc2"].shape == (192, 768)
        assert by_name[f"blocks.{b}.mlp.fc1"].param is vit.blocks[b].mlp.fc1.weight
    # the three views share one storage but are distinct rows
    q, k, v = (by_name[f"blocks.0.attn.qkv[{p}]"].weight for p in "qkv")
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert len({q.data_ptr(), k.data_ptr(), v.data_ptr()}) == 3


def test_vit_without_split(vit):
    targets = select_targets(vit, modules=("qkv",), split_fused=False)
    assert [t.name for t in targets] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert all(t.shape == (576, 192) for t in targets)


def test_vit_glob_pattern(vit):
    targets = select_targets(vit, modules=("blocks.1.mlp.*",))
    assert [t.name for t in targets] == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]


def test_target_weight_is_a_view(vit):
    import copy
    vit = copy.deepcopy(vit)                       # this test writes into the model
    targets = {t.name: t for t in select_targets(vit)}
    qkv = vit.blocks[0].attn.qkv.weight
    before = qkv.detach().clone()
    t = targets["blocks.0.attn.qkv[k]"]
    with torch.no_grad():
        t.weight.fill_(0.125)
    assert torch.all(qkv[192:384] == 0.125)
    assert torch.equal(qkv[:192], before[:192])
    assert torch.equal(qkv[384:], before[384:])
    with torch.no_grad():
        qkv.copy_(before)
    # the view is autograd-connected to the parameter
    (t.weight.sum() * 2).backward()
    assert torch.equal(qkv.grad[192:384], torch.full((192, 192), 2.0))
    assert torch.all(qkv.grad[:192] == 0) and torch.all(qkv.grad[384:] == 0)
    qkv.grad = None
    # and a whole-weight target writes into the Linear
    fc1 = targets["blocks.1.mlp.fc1"]
    with torch.no_grad():
        fc1.weight.mul_(0.0)
    assert torch.all(vit.blocks[1].mlp.fc1.weight == 0)


def test_rebind_finds_the_same_slice_in_a_copy(vit):
    import copy
    other = copy.deepcopy(vit)
    t = {t.name: t for t in select_targets(vit)}["blocks.1.attn.qkv[v]"]
    t2 = t.rebind(other)
    assert t2.param is other.blocks[1].attn.qkv.weight
    assert torch.equal(t2.weight, t.weight)
    assert (t2.row_start, t2.row_end) == (384, 576)


def test_roberta_targets(roberta):
    targets = select_targets(roberta, modules=("query", "key", "value", "dense"))
    names = [t.name for t in targets]
    expected = []
    for layer in range(2):
        p = f"roberta.encoder.layer.{layer}"
        expected += [f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value",
                     f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"]
    encoder = [n for n in names if n.startswith("roberta.encoder.")]
    assert sorted(encoder) == sorted(expected)
    assert "classifier.out_proj" not in names
    modules = dict(roberta.named_modules())
    for t in targets:
        assert t.param is modules[t.name].weight
        assert t.shape == tuple(modules[t.name].weight.shape)
        assert t.weight.data_ptr() == modules[t.name].weight.data_ptr()
    shapes = {n: t.shape for n, t in zip(names, targets)}
    assert shapes["roberta.encoder.layer.0.attention.self.query"] == (32, 32)
    assert shapes["roberta.encoder.layer.0.intermediate.dense"] == (64, 32)
    assert shapes["roberta.encoder.layer.0.output.dense"] == (32, 64)


def test_roberta_encoder_only_with_globs(roberta):
    pats = ("roberta.encoder.*.query", "roberta.encoder.*.key", "roberta.encoder.*.value",
            "roberta.encoder.*.dense")
    names = [t.name for t in select_targets(roberta, modules=pats)]
    assert len(names) == 12
    assert all(n.startswith("roberta.encoder.") for n in names)


def test_nothing_matches_raises(vit, roberta):
    with pytest.raises(ValueError, match="no_such_layer"):
        select_targets(vit, modules=("no_such_layer",))
    with pytest.raises(ValueError, match="qkv"):
        select_targets(roberta)                                  # timm names on a BERT-style model
    with pytest.raises(ValueError):
        select_targets(nn.Sequential(nn.Conv2d(3, 3, 3)))


def test_string_pattern_is_one_pattern(vit):
    assert [t.name for t in select_targets(vit, modules="fc2")] == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]


def test_as_targets():
    lin = nn.Linear(4, 6)
    w = nn.Parameter(torch.randn(5, 3))
    ts = as_targets([lin, w, Target(nn.Parameter(torch.randn(3, 3)), "mine")])
    assert [t.name for t in ts] == ["linear0", "matrix1", "mine"]
    assert ts[0].param is lin.weight and ts[1].param is w
    with pytest.raises(ValueError, match="unique"):
        as_targets([Target(w, "a"), Target(lin.weight, "a")])
    with pytest.raises(TypeError):
        as_targets([3])
    with pytest.raises(ValueError, match=r"\(4,\)"):
        Target(nn.Parameter(torch.randn(4)), "vec")


def test_rebind_keeps_the_names_and_finds_a_tied_weight_under_its_second_name():
    """A weight shared by two modules is found under either name (named_parameters lists it once
    unless asked for duplicates), and the rebound target keeps its name and parameter name."""
    import copy

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(6, 6), nn.Linear(6, 6)
            self.dec.weight = self.enc.weight

    model = Tied()
    t = Target(model.dec.weight, "decoder", "dec.weight")
    other = copy.deepcopy(model)
    t2 = t.rebind(other)
    assert t2.param is other.dec.weight is other.enc.weight
    assert (t2.name, t2.param_name) == ("decoder", "dec.weight")


def test_classifier_head_is_what_get_classifier_returns_else_the_last_linear():
    from q3r.targets import classifier_head

    class HeadFirst(nn.Module):                    # timm's convention, with the head registered first
        def __init__(self):
            super().__init__()
            self.head, self.body = nn.Linear(4, 2), nn.Linear(4, 4)

        def get_classifier(self):
            return self.head

    assert classifier_head(HeadFirst()) == "head"

    class NoHead(HeadFirst):                       # timm with num_classes=0: an Identity, not a Linear
        def __init__(self):
            super().__init__()
            self.head = nn.Identity()

    class Broken(HeadFirst):                       # a get_classifier of another convention
        def get_classifier(self, which):
            return self.head

    assert classifier_head(NoHead()) == "body" and classifier_head(Broken()) == "body"
    assert classifier_head(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) == "2"
    assert classifier_head(nn.Sequential(nn.ReLU())) is None


def test_named_in_finds_the_parameter_name_and_keeps_the_rows():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 6))
    t = Target(model[1].weight, "middle", row_start=2, row_end=4).named_in(model)
    assert (t.param_name, t.row_start, t.row_end, t.shape) == ("1.weight", 2, 4, (2, 4))
    assert torch.equal(t.weight, model[1].weight[2:4])


def test_a_targets_rows_and_parameter_name_for_fused_and_root_linears():
    from q3r.targets import linear_targets
    import copy

    qkv = nn.Linear(4, 12)
    ts = linear_targets("blocks.0.attn.qkv", qkv)
    assert [(t.name, t.param_name, t.rows) for t in ts] == [
        (f"blocks.0.attn.qkv[{p}]", "blocks.0.attn.qkv.weight", slice(4 * i, 4 * i + 4)) for i, p in enumerate("qkv")]
    assert all(torch.equal(qkv.weight[t.rows], t.weight) for t in ts)
    root = nn.Linear(4, 6)                         # a model that is one Linear: its parameter is "weight"
    (t,) = select_targets(root, "*")
    assert (t.name, t.param_name, t.rows) == ("", "weight", slice(0, 6))
    other = copy.deepcopy(root)
    assert t.rebind(other).param is other.weight


def test_the_errors_name_the_target_and_the_model():
    model = nn.Sequential(nn.Linear(4, 4))
    stray = Target(nn.Parameter(torch.randn(3, 5)), "stray")
    with pytest.raises(ValueError) as info:
        stray.named_in(model)
    assert str(info.value) == "target 'stray' (shape (3, 5)) is not a parameter of Sequential"
    with pytest.raises(ValueError) as info:
        stray.rebind(model)
    assert str(info.value) == "target 'stray' has no param_name, so it cannot be found in another model"
    with pytest.raises(KeyError) as info:
        Target(model[0].weight, "first", "1.weight").rebind(model)
    assert info.value.args == ("target 'first': no parameter '1.weight' in Sequential",)
    w = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError) as info:
        as_targets([Target(w, "a"), Target(w, "a")])
    assert str(info.value) == "target names must be unique, but got ['a', 'a']"
    with pytest.raises(TypeError) as info:
        as_targets([w, 3])
    assert str(info.value) == "targets must be Targets, nn.Linear modules or 2-D tensors, but got int"
    with pytest.raises(ValueError) as info:
        Target(nn.Parameter(torch.randn(2, 3, 4)), "conv")
    assert str(info.value) == "target 'conv' must be a 2-D weight, but got shape (2, 3, 4)"


def test_all_but_head_is_every_linear_but_the_head_and_adds_the_named_extras(vit):
    default = [t.name for t in select_targets(vit, "all-but-head")]
    assert default == [t.name for t in select_targets(vit, None)] == [t.name for t in select_targets(vit, "vit")]
    assert "head" not in default
    both = select_targets(vit, ["all-but-head", "head", "qkv"])     # qkv's targets are in already: not twice
    assert [t.name for t in both] == default + ["head"]
    assert both[-1].param is vit.head.weight
    whole = [t.name for t in select_targets(vit, ["all-but-head"], split_fused=False)]
    assert whole == [t.name for t in select_targets(vit, "vit", split_fused=False)]
    assert "blocks.0.attn.qkv" in whole


def test_a_model_with_nothing_but_a_head_names_it_in_the_error():
    with pytest.raises(ValueError) as info:
        select_targets(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), None)
    assert str(info.value) == ("Sequential has nothing to regularize: Q3R acts on nn.Linear weights and its only "
                               "nn.Linear is the classifier head '1'")
    with pytest.raises(ValueError) as info:
        select_targets(nn.Sequential(nn.ReLU()), None)
    assert str(info.value) == "Sequential has nothing to regularize: Q3R acts on nn.Linear weights and it has none"


def test_a_pattern_that_matches_nothing_names_the_model_and_its_first_12_linears():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(14)])
    with pytest.raises(ValueError) as info:
        select_targets(model, ["fc9", "vit"])
    assert str(info.value) == ("no nn.Linear in Sequential matches modules=('fc9', 'qkv', 'proj', 'fc1', 'fc2'); "
                               f"Linear layers present: {[str(i) for i in range(12)]}")


def test_all_but_head_extras_follow_split_fused():
    """An extra pattern that names a fused qkv already in the default selection adds nothing, split or not."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.fc1, self.head = nn.Linear(4, 12), nn.Linear(4, 4), nn.Linear(4, 2)

    model = Tiny()
    whole = select_targets(model, ["all-but-head", "qkv"], split_fused=False)
    assert [(t.name, t.rows) for t in whole] == [("qkv", slice(0, 12)), ("fc1", slice(0, 4))]
    split = select_targets(model, ["all-but-head", "qkv"])
    assert [t.name for t in split] == ["qkv[q]", "qkv[k]", "qkv[v]", "fc1"]

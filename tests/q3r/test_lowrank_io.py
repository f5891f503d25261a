"""q3r.save_lowrank / q3r.load_lowrank: a factorized model saved as safetensors and loaded back into
a freshly built dense architecture computes the same outputs with the same parameter count."""
import pytest
import torch
from torch import nn

import q3r
from q3r.lowrank_io import lowrank_layers, read_metadata


def tiny_sequential(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 36), nn.ReLU(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 3)).double()


def tiny_vit(seed=0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                             num_heads=2).eval()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def assert_same_weights(a, b):
    """Bit for bit the same tensors under the same names (outputs then agree up to the matmul
    kernels, which may sum in another order for another memory layout: SVD factors are column-major)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("p", [0.1, 0.4])
def test_round_trip_sequential(tmp_path, p):
    model = tiny_sequential()
    targets = q3r.select_targets(model, ("0", "2"))
    small = q3r.SpectralCache(targets).factorized_model(model, p)
    path = q3r.save_lowrank(small, tmp_path / "m.safetensors", metadata={"retention": p})
    assert read_metadata(path) == {"format": "q3r.lowrank/1", "retention": str(p)}

    fresh = tiny_sequential(seed=1)                         # other weights: everything must come from the file
    loaded = q3r.load_lowrank(fresh, path)
    assert loaded is fresh and isinstance(loaded[0], q3r.LowRankLinear) and isinstance(loaded[4], nn.Linear)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert_same_weights(loaded, small)
    torch.testing.assert_close(loaded(x), small(x), rtol=1e-12, atol=1e-12)
    assert n_params(loaded) == n_params(small) == q3r.parameter_counts(model, targets, p)["model_kept"]
    assert n_params(loaded) < n_params(model)
    torch.testing.assert_close(loaded[0].bias, model[0].bias, rtol=0, atol=0)      # biases kept


def test_round_trip_timm_vit_with_fused_qkv(tmp_path):
    model = tiny_vit()
    targets = q3r.select_targets(model)                      # qkv split in three, proj, fc1, fc2
    small = q3r.SpectralCache(targets).factorized_model(model, 0.2)
    path = q3r.save_lowrank(small, tmp_path / "vit.safetensors")
    layers = lowrank_layers(__import__("safetensors.torch").torch.load_file(str(path)))
    r = q3r.target_rank((32, 32), 0.2)
    assert layers["blocks.0.attn.qkv"] == {"in_features": 32, "out_features": 96, "segments": [(32, r)] * 3}

    loaded = q3r.load_lowrank(tiny_vit(seed=1), path).eval()
    x = torch.randn(4, 1, 8, 8)
    assert_same_weights(loaded, small)
    torch.testing.assert_close(loaded(x), small(x))
    counts = q3r.parameter_counts(model, targets, 0.2)
    assert n_params(loaded) == n_params(small) == counts["model_kept"] < counts["model_dense"]


def test_dense_segments_and_loading_twice(tmp_path):
    """Rows that stay dense (a LowRankLinear from_linear with a gap) load as dense segments."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 10)
    A, B = torch.randn(4, 2), torch.randn(2, 6)
    model = nn.Sequential(q3r.LowRankLinear.from_linear(lin, [(2, 6, (A, B))]))       # rows 0-2, 6-10 dense
    path = q3r.save_lowrank(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(6, 10))
    q3r.load_lowrank(fresh, path)
    q3r.load_lowrank(fresh, path)                            # a LowRankLinear already: rebuilt, loaded again
    x = torch.randn(3, 6)
    assert_same_weights(fresh, model)
    torch.testing.assert_close(fresh(x), model(x))
    assert [fresh[0].A[k].shape[1] if k in fresh[0].A else None for k in fresh[0].order] == [None, 2, None]


def test_mismatched_architecture_is_a_clear_error(tmp_path):
    model = tiny_sequential()
    small = q3r.SpectralCache(q3r.select_targets(model, ("0",))).factorized_model(model, 0.2)
    path = q3r.save_lowrank(small, tmp_path / "m.safetensors")
    wrong = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 3))
    with pytest.raises(ValueError, match="'0' is 36 x 12 in the file but 40 x 12 in the model"):
        q3r.load_lowrank(wrong, path)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        q3r.load_lowrank(nn.Sequential(nn.ReLU(), nn.ReLU()), path)


@pytest.mark.parametrize("p", [0.1, 1.0])
def test_a_layer_saved_without_bias_loads_without_bias(tmp_path, p):
    """A model trained with bias-free targeted Linears (the paper code's LoRA) loads into the dense
    architecture, whose Linears have biases: those the file holds no bias for lose theirs, no other."""
    model = tiny_sequential()
    model[0] = nn.Linear(12, 36, bias=False).double()
    model[2] = nn.Linear(36, 20, bias=False).double()
    targets = q3r.select_targets(model, ("0", "2"))
    small = q3r.SpectralCache(targets).factorized_model(model, p)
    path = q3r.save_lowrank(small, tmp_path / "m.safetensors")
    loaded = q3r.load_lowrank(tiny_sequential(seed=1), path)
    assert loaded[0].bias is None and loaded[2].bias is None and loaded[4].bias is not None
    assert_same_weights(loaded, small)
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), small(x), rtol=1e-12, atol=1e-12)
    state = small.state_dict()               # a layer the file does not hold keeps its bias: a strict error
    del state["4.weight"], state["4.bias"]
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "4.weight", "4.bias"'):
        q3r.load_lowrank(tiny_sequential(seed=2), tmp_path / "partial.safetensors")


def test_float64_layers_load_twice_in_float64_into_a_new_folder(tmp_path):
    """Saving creates the missing folders; a float64 LowRankLinear rebuilt on a second load stays float64."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 10).double()
    A, B = torch.randn(4, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    model = nn.Sequential(q3r.LowRankLinear.from_linear(lin, [(2, 6, (A, B))]))
    path = q3r.save_lowrank(model, tmp_path / "new" / "folder" / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(6, 10).double())
    q3r.load_lowrank(fresh, path)
    q3r.load_lowrank(fresh, path)
    assert all(p.dtype == torch.float64 for p in fresh.parameters())
    assert_same_weights(fresh, model)


def test_the_error_names_the_module_type_and_strict_false_allows_extra_modules(tmp_path):
    model = tiny_sequential()
    small = q3r.SpectralCache(q3r.select_targets(model, ("0",))).factorized_model(model, 0.2)
    path = q3r.save_lowrank(small, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="'0' is a ReLU in the model"):
        q3r.load_lowrank(nn.Sequential(nn.ReLU(), nn.ReLU()), path)
    bigger = tiny_sequential(seed=1).append(nn.Linear(3, 2).double())   # a module the file does not hold
    with pytest.raises(RuntimeError, match="Missing key"):
        q3r.load_lowrank(tiny_sequential(seed=1).append(nn.Linear(3, 2).double()), path)
    q3r.load_lowrank(bigger, path, strict=False)
    assert_same_weights(bigger[:5], small)


def factor_state(**segments):
    """A state dict of one LowRankLinear "m" from {"A0": shape, "B0": shape, "dense1": shape, ...}."""
    return {f"m.{k[:-1]}.{k[-1]}": torch.zeros(*shape) for k, shape in segments.items()}


@pytest.mark.parametrize("segments", [
    {"A0": (4, 2), "B0": (3, 6)},                        # inner widths differ
    {"A0": (4, 2)},                                      # A without B
    {"B0": (2, 6)},                                      # B without A
    {"dense0": (2, 6), "dense1": (2, 5)},                # two input widths
    {"dense0": (2, 6), "dense2": (2, 6)},                # segments not numbered 0..n-1
])
def test_lowrank_layers_refuses_malformed_segments(segments):
    with pytest.raises(ValueError, match="m: segment"):
        lowrank_layers(factor_state(**segments))


def test_a_malformed_segment_error_shows_the_segments_shapes():
    with pytest.raises(ValueError) as info:
        lowrank_layers(factor_state(A0=(4, 2), B0=(3, 6)))
    assert str(info.value) == ("m: segment 0 is neither dense nor a factor pair A (d_out, r), B (r, d_in): "
                               "{'A': (4, 2), 'B': (3, 6)}")


def test_a_layer_loaded_without_bias_is_rebuilt_without_bias(tmp_path):
    """A second load starts again from the LowRankLinear's shape, bias included: a layer a first file left
    bias-free does not take the bias of a second file (strict: an unexpected key; not strict: ignored)."""
    torch.manual_seed(0)
    A, B = torch.randn(4, 2), torch.randn(2, 6)
    bias_free = nn.Sequential(q3r.LowRankLinear.from_linear(nn.Linear(6, 4, bias=False), [(0, 4, (A, B))]))
    with_bias = nn.Sequential(q3r.LowRankLinear.from_linear(nn.Linear(6, 4), [(0, 4, (A, B))]))
    first = q3r.save_lowrank(bias_free, tmp_path / "free.safetensors")
    second = q3r.save_lowrank(with_bias, tmp_path / "bias.safetensors")
    model = q3r.load_lowrank(nn.Sequential(nn.Linear(6, 4)), first)
    assert model[0].bias is None
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0.bias"'):
        q3r.load_lowrank(model, second)
    q3r.load_lowrank(model, second, strict=False)
    assert model[0].bias is None
    assert_same_weights(model, bias_free)


@pytest.mark.filterwarnings("ignore:for 0")          # loading into meta parameters copies nothing (a no-op)
def test_a_second_load_rebuilds_the_layer_on_its_device(tmp_path):
    """On the meta device (any device but the CPU): the rebuilt Linear, and so the new segments, are not
    made on the default device."""
    torch.manual_seed(0)
    A, B = torch.randn(4, 2), torch.randn(2, 6)
    path = q3r.save_lowrank(nn.Sequential(q3r.LowRankLinear.from_linear(nn.Linear(6, 4), [(0, 4, (A, B))])),
                            tmp_path / "m.safetensors")
    model = nn.Sequential(nn.Linear(6, 4, device="meta"))
    q3r.load_lowrank(model, path)
    q3r.load_lowrank(model, path)
    assert isinstance(model[0], q3r.LowRankLinear)
    assert {p.device.type for p in model.parameters()} == {"meta"}

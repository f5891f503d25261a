"""DeltaLinear (tuning/trial/layers.py) in float64 against numpy: y = x (W0 + Delta W)^T + b with W0 and b
frozen, for an update and a bias that are not zero (timm's fresh ViT has zero biases, so the technique
tests could not tell a dropped bias or a sign; found by ``make mutants``)."""
import numpy as np
import torch
from torch import nn

from tuning.trial.layers import DeltaLinear, merge_layers, replace_modules


def test_forward_merge_and_freezing_with_a_nonzero_update_and_bias():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3, dtype=torch.float64)
    layer = DeltaLinear(lin)
    assert torch.equal(layer.delta, torch.zeros(3, 5, dtype=torch.float64))
    assert not lin.weight.requires_grad and not lin.bias.requires_grad and layer.delta.requires_grad
    with torch.no_grad():
        layer.delta.copy_(torch.randn(3, 5, dtype=torch.float64))
    W0, b, D = (t.detach().numpy() for t in (lin.weight, lin.bias, layer.delta))
    x = np.random.default_rng(1).standard_normal((4, 5))
    expected = x @ (W0 + D).T + b
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    merged = layer.to_linear()
    np.testing.assert_allclose(merged.weight.detach().numpy(), W0 + D, rtol=0, atol=0)
    np.testing.assert_allclose(merged(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    assert (layer.in_features, layer.out_features) == (5, 3)


def test_a_bias_free_layer_merges_into_a_bias_free_linear():
    lin = nn.Linear(4, 2, bias=False, dtype=torch.float64)
    merged = DeltaLinear(lin).to_linear()
    assert merged.bias is None and torch.equal(merged.weight, lin.weight)


def test_replace_modules_swaps_a_top_level_and_a_nested_layer_in_place_and_merge_undoes_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.Sequential(nn.Linear(4, 2, dtype=torch.float64)))
    old = [model[0], model[1][0]]
    new = replace_modules(model, ["0", "1.0"], lambda name, lin: DeltaLinear(lin))
    assert list(new) == ["0", "1.0"] and new["0"] is model[0] and new["1.0"] is model[1][0]
    assert [m.base_layer for m in new.values()] == old
    merged = merge_layers(model)
    assert type(merged[0]) is nn.Linear and type(merged[1][0]) is nn.Linear and type(model[0]) is DeltaLinear
    assert torch.equal(merged[0].weight, old[0].weight) and torch.equal(merged[1][0].bias, old[1].bias)

"""LoRITa's ProductLinear (tuning/trial/layers.py) on its own, in float64: the defaults, the checks of its
arguments, the draws of its fresh factors and bias, and merging a bias-free product (issue 23, found by
``make mutants``). The references are written from the class's description with numpy."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tuning.trial.layers import ProductLinear


def linear(d_in=5, d_out=3, bias=True):
    torch.manual_seed(7)
    return nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)


def test_the_defaults_are_one_input_side_product_over_every_row():
    lin = linear()
    layer = ProductLinear(lin, 3)
    assert layer.form == "input" and layer.segments == [(0, 3)]
    assert [tuple(f.shape) for f in layer.factors] == [(5, 5), (5, 5), (3, 5)]
    assert all(f.dtype == torch.float64 for f in layer.factors) and layer.bias.dtype == torch.float64
    W1, W2, W3 = (f.detach().numpy() for f in layer.factors)
    x = np.random.default_rng(0).standard_normal((4, 5))
    expected = x @ (W3 @ W2 @ W1).T + layer.bias.detach().numpy()
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_depth_one_is_one_factor_and_a_bad_depth_is_refused():
    assert [tuple(f.shape) for f in ProductLinear(linear(), 1).factors] == [(3, 5)]
    for depth in (0, -1, 1.5, 2.0, True, None):
        with pytest.raises(ValueError, match="depth"):
            ProductLinear(linear(), depth)


def test_input_side_factors_and_bias_are_fresh_nn_linear_draws():
    """W_1 .. W_D drawn in order like nn.Linear(d_in, ., bias=False).weight (uniform in +-1/sqrt(d_in)),
    then the bias like W_D's nn.Linear bias: nothing of the original layer's weight or bias is kept."""
    lin = linear()
    torch.manual_seed(3)
    layer = ProductLinear(lin, 3)
    torch.manual_seed(3)
    bound = 1 / math.sqrt(5)
    expected = [torch.empty(d_o, 5, dtype=torch.float64).uniform_(-bound, bound) for d_o in (5, 5, 3)]
    expected_bias = torch.empty(3, dtype=torch.float64).uniform_(-bound, bound)
    for f, e in zip(layer.factors, expected):
        torch.testing.assert_close(f.detach(), e, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(layer.bias.detach(), expected_bias, rtol=1e-12, atol=1e-15)
    assert not torch.equal(layer.bias.detach(), lin.bias.detach())


def test_a_bias_free_product_merges_into_a_bias_free_linear():
    layer = ProductLinear(linear(bias=False), 2, form="output")
    merged = layer.to_linear()
    assert layer.bias is None and merged.bias is None
    torch.testing.assert_close(merged.weight, layer.merged_weight().detach(), rtol=0, atol=0)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(merged(x), x @ layer.merged_weight().detach().T, rtol=1e-12, atol=1e-14)


def test_the_output_form_keeps_the_original_bias_and_computes_the_original_layer():
    lin = linear()
    layer = ProductLinear(lin, 3, form="output")
    assert torch.equal(layer.bias.detach(), lin.bias.detach())
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-12, atol=1e-14)


def test_the_errors_name_the_value():
    lin = nn.Linear(4, 6)
    for depth in (0, True, 2.0):
        with pytest.raises(ValueError) as info:
            ProductLinear(lin, depth)
        assert str(info.value) == f"LoRITa depth must be an int >= 1, but got depth={depth!r}"
    with pytest.raises(ValueError) as info:
        ProductLinear(lin, 2, form="middle")
    assert str(info.value) == "LoRITa form must be one of ('input', 'output'), but got form='middle'"
    with pytest.raises(ValueError) as info:
        ProductLinear(lin, 2, segments=[(0, 2), (2, 5)])
    assert str(info.value) == "segments [(0, 2), (2, 5)] must cover the 6 rows of the weight"


@pytest.mark.parametrize("form", ProductLinear.FORMS)
def test_the_factors_bias_and_merged_linear_are_on_the_layers_device(form):
    """A layer on the GPU gets its factors there, not on the CPU: the meta device (no data, any machine)
    stands for it. Its merged nn.Linear (``plain_linear``) is built there too."""
    layer = ProductLinear(nn.Linear(5, 6, device="meta", dtype=torch.float64), 2, segments=[(0, 2), (2, 6)],
                          form=form)
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {("meta", torch.float64)}
    merged = layer.to_linear()
    assert {(p.device.type, p.dtype) for p in merged.parameters()} == {("meta", torch.float64)}

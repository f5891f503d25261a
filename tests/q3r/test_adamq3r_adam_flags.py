"""AdamQ3R hands Adam's own options to torch's ``adam``: a param group's amsgrad, maximize, differentiable,
fused and capturable, the constructor's foreach, and whether a group holds complex parameters. With
``lmbda=0`` each acts as in ``torch.optim.Adam`` (decoupled weight decay, none on the regularized matrix):
the same weights bitwise, or the same error. The flags change the arithmetic where it shows: fused (1200
entries: its vector kernel rounds otherwise than the loop), foreach in float16, amsgrad, maximize and
differentiable anywhere, foreach on complex parameters (viewed as real pairs only when told)."""
import pytest
import torch
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.targets import Target

LR, WD, STEPS = 1e-2, 0.1, 4


def draw(shape, dtype, g):
    """Normal entries, complex ones with an imaginary part (drawn in float64 or complex128, then cast)."""
    return torch.randn(shape, generator=g, dtype=torch.complex128 if dtype.is_complex else torch.float64).to(dtype)


def twins(dtype, bias_dtype):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(30, 40, generator=g, dtype=torch.float64).to(dtype)
    b = draw(40, bias_dtype, g)
    return [nn.Parameter(W.clone()), nn.Parameter(b.clone())], [nn.Parameter(W.clone()), nn.Parameter(b.clone())]


def outcome(opt, params):
    """The weights after STEPS steps on fixed gradients, or the error the step raised."""
    try:
        for t in range(STEPS):
            g = torch.Generator().manual_seed(100 + t)
            for p in params:
                p.grad = draw(p.shape, p.dtype, g)
            opt.step()
    except Exception as e:                                   # compared with torch.optim.Adam's own error
        return type(e), str(e)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("flags, init, dtype, bias_dtype", [
    ({"amsgrad": True}, {}, torch.float64, torch.float64),
    ({"maximize": True}, {}, torch.float64, torch.float64),
    ({"differentiable": True}, {}, torch.float64, torch.float64),
    ({"fused": True}, {}, torch.float64, torch.float64),
    ({"capturable": True}, {}, torch.float64, torch.float64),   # refused on the CPU, by torch, in both
    ({}, {"foreach": True}, torch.float16, torch.float16),
    ({}, {"foreach": True}, torch.float64, torch.complex128),
])
def test_adams_options_act_as_in_torch_adam(flags, init, dtype, bias_dtype):
    (W, b), (W2, b2) = twins(dtype, bias_dtype)
    opt = AdamQ3R([{"params": [W, b], **flags}], lr=LR, weight_decay=WD, lmbda=0.0,
                  targets=[Target(W, "W")], **init)
    ref = torch.optim.Adam([{"params": [W2], "weight_decay": 0.0, **flags}, {"params": [b2], **flags}],
                           lr=LR, weight_decay=WD, decoupled_weight_decay=True, **init)
    got, want = outcome(opt, [W, b]), outcome(ref, [W2, b2])
    if isinstance(want, tuple):
        assert got == want
    else:
        assert not isinstance(got, tuple), got
        for x, y in zip(got, want):
            assert torch.equal(x, y), (x - y).abs().max()


def test_param_groups_hold_adams_hyperparameters_with_decoupled_weight_decay():
    """What a scheduler, a logger or a checkpoint reads: torch's AdamW-style Adam group, plus the Q3R keys."""
    (W, b), (W2, b2) = twins(torch.float64, torch.float64)
    for foreach in (None, True, False):
        opt = AdamQ3R([W, b], lr=LR, weight_decay=WD, foreach=foreach, targets=[Target(W, "W")],
                      target_rank=0.3, lmbda=0.2, period=4)
        ref = torch.optim.Adam([W2, b2], lr=LR, weight_decay=WD, foreach=foreach, decoupled_weight_decay=True)
        group, want = dict(opt.param_groups[0]), dict(ref.param_groups[0])
        assert group.pop("params") == [W, b] and want.pop("params") == [W2, b2]
        assert group == {**want, "target_rank": 0.3, "lmbda": 0.2, "period": 4}
        assert group["decoupled_weight_decay"] is True and group["foreach"] is foreach

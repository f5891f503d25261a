"""The "warmup" eps rule for an update that starts at zero (fine-tuning's Delta W), in float64
against the reference loop of Algorithm 2 (tests/reference.py) and against the rule written out."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q3r
from q3r.schedules import PaperEps, WarmupEps, make_schedule
from tests.reference import adamq3r_ref


def warmup_eps_by_hand(sigmas: list, K: int) -> list:
    """eps_k = sigma_k for k < K, then eps_k = min(eps_{k-1}, sigma_k)."""
    out = []
    for k, s in enumerate(sigmas):
        out.append(s if k < K or not out else min(out[-1], s))
    return out


def test_warmup_rule_follows_sigma_then_is_the_running_minimum():
    sigmas = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2, 0.4, 0.05]
    for K in (0, 1, 3, 5, 8, 20):
        f, eps, seen = WarmupEps(K), torch.tensor([math.inf], dtype=torch.float64), []
        for k, s in enumerate(sigmas):
            eps = f(eps, torch.tensor([s], dtype=torch.float64), k)
            seen.append(float(eps))
        assert seen == warmup_eps_by_hand(sigmas, K), K
    assert warmup_eps_by_hand(sigmas, 3)[:4] == [0.1, 0.5, 0.3, 0.3]      # rises during the warm-up only


def test_zero_warmup_is_the_paper_rule():
    gen = torch.Generator().manual_seed(0)
    eps_w = eps_p = torch.full((5,), math.inf, dtype=torch.float64)
    for k in range(10):
        sigma = torch.rand(5, generator=gen, dtype=torch.float64)
        eps_w, eps_p = WarmupEps(0)(eps_w, sigma, k), PaperEps()(eps_p, sigma)
        assert torch.equal(eps_w, eps_p)


def test_warmup_schedule_by_name_and_its_errors():
    assert make_schedule({"name": "warmup", "reweightings": 4}) == WarmupEps(4)
    with pytest.raises(ValueError, match="reweightings=-1"):
        WarmupEps(-1)
    with pytest.raises(ValueError, match="reweightings=2.5"):
        make_schedule({"name": "warmup", "reweightings": 2.5})


# ---- a Delta W that starts at zero, through AdamQ3R, against the reference ------------------------

class DeltaNet(nn.Module):
    """y = tanh(x (W0 + D)^T) w2: W0 frozen (a buffer), the update D starts at zero."""

    def __init__(self, d_in=12, d_h=10):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("W0", torch.randn(d_h, d_in, generator=g, dtype=torch.float64) / 3)
        self.delta = nn.Parameter(torch.zeros(d_h, d_in, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(2, d_h, generator=g, dtype=torch.float64) / 3)

    def forward(self, x):
        return torch.tanh(x @ (self.W0 + self.delta).T) @ self.head.T


def batch(t):
    g = torch.Generator().manual_seed(100 + t)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64)
    return x, torch.sin(x[:, :2] * 2)


def run_library(svd, K, steps, period, **kw):
    net = DeltaNet()
    opt = q3r.AdamQ3R([net.delta, net.head], targets=[q3r.Target(net.delta, "delta")], eps_schedule={"name": "warmup", "reweightings": K},
                      svd=svd, period=period, **kw)
    eps = []
    for t in range(steps):
        x, y = batch(t)
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
        eps.append(opt.operators()["delta"].eps if opt.operators() else math.inf)
    return net, eps


def run_reference(K, steps, period, **kw):
    net = DeltaNet()

    def grad_fn(params, t):
        d, h = (torch.tensor(p, requires_grad=True) for p in params)
        x, y = batch(t)
        F.mse_loss(torch.tanh(x @ (net.W0 + d).T) @ h.T, y).backward()
        return [d.grad.numpy(), h.grad.numpy()]

    history = []
    init = [net.delta.detach().numpy(), net.head.detach().numpy()]
    final = adamq3r_ref(init, grad_fn, steps, regularized=[True, False], history=history, eps_warmup=K, period=period, **kw)
    return final, [h[1][0] for h in history]


@pytest.mark.parametrize("svd", ["exact", "warm"])
def test_adamq3r_on_a_zero_start_update_matches_the_reference(svd):
    kw = dict(lr=2e-2, lmbda=2.0, target_rank=2)
    steps, period, K = 24, 2, 4
    net, eps = run_library(svd, K, steps, period, **kw)
    (delta_ref, head_ref), eps_ref = run_reference(K, steps, period, **kw)
    tol = 1e-10 if svd == "exact" else 1e-6
    np.testing.assert_allclose(net.delta.detach().numpy(), delta_ref, rtol=tol, atol=tol * np.abs(delta_ref).max())
    np.testing.assert_allclose(net.head.detach().numpy(), head_ref, rtol=tol, atol=tol)
    assert eps[0] == math.inf and eps_ref[0] == math.inf                 # D = 0 at step 0: R is the identity
    np.testing.assert_allclose(eps[1:], eps_ref[1:], rtol=tol)
    rises = [b > a for a, b in zip(eps_ref[1:2 * K:period], eps_ref[1 + period:2 * K:period])]
    assert any(rises)                                                     # the warm-up let eps rise
    assert all(b <= a for a, b in zip(eps_ref[2 * K:], eps_ref[2 * K + 1:]))   # then it never rose


def test_warmup_ends_with_a_larger_eps_than_the_paper_rule():
    kw = dict(lr=2e-2, lmbda=2.0, target_rank=2)
    _, eps_paper = run_reference(0, 24, 2, **kw)
    _, eps_warm = run_reference(4, 24, 2, **kw)
    assert eps_warm[-1] > 1.5 * eps_paper[-1]    # (2.0x here) the paper's rule keeps the tiny eps of a T-step-old update


def test_the_reweighting_count_survives_a_state_dict_round_trip():
    net, _ = run_library("exact", 6, 5, 1, lr=2e-2, lmbda=2.0, target_rank=2)   # 5 reweightings done
    opt = q3r.AdamQ3R([net.delta, net.head], targets=[q3r.Target(net.delta, "delta")], eps_schedule={"name": "warmup", "reweightings": 6},
                      svd="exact", period=1, lr=2e-2, lmbda=2.0, target_rank=2)
    state_net = copy.deepcopy(net)
    x, y = batch(0)
    F.mse_loss(net(x), y).backward()
    opt.step()                                   # one reweighting: count 0 -> 1
    saved = copy.deepcopy(opt.state_dict())
    assert saved["q3r"]["banks"][0]["delta"]["reweightings"] == 1
    opt2 = q3r.AdamQ3R([state_net.delta, state_net.head], targets=[q3r.Target(state_net.delta, "delta")],
                       eps_schedule={"name": "warmup", "reweightings": 6}, svd="exact", period=1, lr=2e-2,
                       lmbda=2.0, target_rank=2)
    opt2.load_state_dict(saved)
    assert opt2.banks[0].reweightings == 1

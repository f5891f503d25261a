"""Epsilon schedules by name, and per-target diagnostics against hand computations."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import q3r
from q3r.schedules import GeometricEps, make_schedule


def test_paper_schedule_is_min_and_starts_at_sigma_next():
    f = make_schedule("paper")
    inf = torch.tensor([math.inf, 2.0, 2.0])
    torch.testing.assert_close(f(inf, torch.tensor([3.0, 1.0, 5.0])), torch.tensor([3.0, 1.0, 2.0]))


def test_geometric_schedule_decays_to_floor_and_never_increases():
    f = make_schedule({"name": "geometric", "decay": 0.5, "floor": 0.3})
    eps = torch.tensor([math.inf], dtype=torch.float64)
    seen = []
    for _ in range(5):
        eps = f(eps, torch.tensor([2.0], dtype=torch.float64))
        seen.append(float(eps))
    assert seen == [2.0, 1.0, 0.5, 0.3, 0.3]
    assert float(f(torch.tensor([0.1]), torch.tensor([2.0]))) == pytest.approx(0.1)   # below the floor already: stays


def test_schedule_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown eps schedule 'cosine'"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="decay=1.5"):
        GeometricEps(decay=1.5)


def test_geometric_schedule_through_the_optimizer():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16, bias=False).double()
    opt = q3r.AdamQ3R(lin.parameters(), targets=[lin], target_rank=3, period=1, svd="exact",
                      eps_schedule={"name": "geometric", "decay": 0.5, "floor": 1e-6})
    lin.weight.grad = torch.zeros_like(lin.weight)
    sigma_next = float(torch.linalg.svdvals(lin.weight.detach())[3])   # sigma_{r+1} at the first fit
    opt.step()
    eps0 = opt.operators()["linear0"].eps
    assert eps0 == pytest.approx(sigma_next, rel=1e-12)
    opt.step()
    assert opt.operators()["linear0"].eps == pytest.approx(0.5 * eps0, rel=1e-12)


def test_diagnostics_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(10, 10, bias=False).double()
    sigma = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)
    p = sigma / sigma.sum()
    pen = q3r.Q3RPenalty([lin], target_rank=2, svd="exact")
    pen.penalty()
    d = q3r.diagnostics(pen.targets, target_rank=2, banks=[pen.bank])["linear0"]
    assert d["eff_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
    assert d["tail_ratio"] == pytest.approx((sigma[:2] ** 2).sum() / (sigma ** 2).sum(), rel=1e-10)
    assert d["eps"] == pytest.approx(sigma[2], rel=1e-10)
    assert d["r_env"] == 2
    assert d["q3r"] == pytest.approx(pen.value().item(), rel=1e-10)
    flat = q3r.flatten({"a": {"x": 1.0}, "b": {"x": 3.0}})
    assert flat == {"diag/a/x": 1.0, "diag/b/x": 3.0, "diag/mean/x": 2.0}


def test_effective_rank_extremes():
    assert float(q3r.effective_rank(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert float(q3r.effective_rank(torch.ones(7))) == pytest.approx(7.0)

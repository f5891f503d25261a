"""Epsilon schedules by name, and per-target diagnostics against hand computations."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import q3r
from q3r.schedules import GeometricEps, make_schedule, next_eps


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


def linear_eps_ref(eps0: float, steps: int, reweightings: int, final: float = 1e-5) -> list:
    """The published code's "linear" schedule (ThatE10/Q3R Functions/Q3R.py, Wx.update_weightoperator),
    in float64: eps_0 = sigma_{r+1}(W_0), c = exp((log final - log eps_0) / N), eps <- max(c eps, final)."""
    c = math.exp((math.log(final) - math.log(eps0)) / steps)
    out = [eps0]
    for _ in range(reweightings - 1):
        out.append(max(c * out[-1], final))
    return out


def test_linear_schedule_matches_the_published_formula():
    steps, n = 40, 50
    f = make_schedule({"name": "linear", "steps": steps})
    sigma0 = torch.tensor([2.0, 0.3, 7.5])
    eps, first, seen = torch.full((3,), math.inf), torch.full((3,), math.inf), []
    for k in range(n):
        sigma = sigma0 * (1 + 0.1 * k)             # sigma_{r+1} moves; the schedule ignores it after the first fit
        eps = f(eps, sigma, first)
        first = torch.where(torch.isinf(first), eps, first)   # what the operator bank keeps
        seen.append(eps.clone())
    seen = torch.stack(seen).double()
    for i, e0 in enumerate(sigma0.tolist()):
        ref = torch.tensor(linear_eps_ref(e0, steps, n), dtype=torch.float64)
        torch.testing.assert_close(seen[:, i], ref, rtol=1e-5, atol=0)
        assert seen[steps, i].item() == pytest.approx(1e-5, rel=1e-5)   # reaches final after N reweightings
        assert torch.all(seen[steps + 1:, i] == torch.tensor(1e-5).double())   # and stays there


def test_linear_schedule_never_raises_eps_and_needs_steps():
    f = make_schedule({"name": "linear", "steps": 3})
    below = torch.tensor([3e-6])                    # eps_0 below final: the published code would grow it
    assert float(f(below, torch.tensor([1.0]), below)) == pytest.approx(3e-6)
    with pytest.raises(ValueError, match="steps=None"):
        make_schedule({"name": "linear", "steps": None})
    with pytest.raises(TypeError):
        make_schedule("linear")                      # N has no default in the library


def test_linear_schedule_through_the_optimizer_survives_a_state_dict_round_trip():
    def build():
        torch.manual_seed(0)
        lin = nn.Linear(16, 16, bias=False).double()
        opt = q3r.AdamQ3R(lin.parameters(), targets=[lin], target_rank=3, period=1, svd="exact", lmbda=0.1,
                          eps_schedule={"name": "linear", "steps": 4})
        lin.weight.grad = torch.zeros_like(lin.weight)
        return lin, opt

    lin, opt = build()
    eps0 = float(torch.linalg.svdvals(lin.weight.detach())[3])
    ref = linear_eps_ref(eps0, 4, 7)
    opt.step(); opt.step()
    state = copy.deepcopy(opt.state_dict())
    lin2, opt2 = build()
    lin2.weight.data.copy_(lin.weight.data)
    opt2.load_state_dict(state)
    for k in range(2, 7):
        for o in (opt, opt2):
            o.step()
            assert o.operators()["linear0"].eps == pytest.approx(ref[k], rel=1e-10), k


def test_schedule_bounds_are_the_documented_ones():
    """Geometric decay in (0, 1]: 1 keeps eps, 0 is refused; linear steps >= 1 and final > 0."""
    keep = make_schedule({"name": "geometric", "decay": 1.0, "floor": 0.0})
    assert float(keep(torch.tensor([0.25]), torch.tensor([9.0]))) == 0.25
    with pytest.raises(ValueError, match="decay=0.0"):
        make_schedule({"name": "geometric", "decay": 0.0})
    one = make_schedule({"name": "linear", "steps": 1, "final": 1e-2})   # final reached in one reweighting
    assert float(one(torch.tensor([0.5]), torch.tensor([9.0]), torch.tensor([0.5]))) == pytest.approx(1e-2)
    for final in (0.0, -1.0):
        with pytest.raises(ValueError, match="final"):
            make_schedule({"name": "linear", "steps": 3, "final": final})


def test_schedule_errors_name_the_value_and_a_dict_without_name_is_the_paper_rule():
    from q3r.schedules import LinearEps, PaperEps

    with pytest.raises(ValueError) as info:
        GeometricEps(floor=-1e-3)
    assert str(info.value) == "geometric eps floor must be >= 0, but got floor=-0.001"
    with pytest.raises(ValueError) as info:
        LinearEps(steps=10, final=-1.0)
    assert str(info.value) == "linear eps final must be > 0, but got final=-1.0"
    with pytest.raises(ValueError) as info:
        make_schedule(3)
    assert str(info.value) == "eps schedule must be a name, a dict or a callable, but got 3"
    assert type(make_schedule({})) is PaperEps


def test_the_default_schedule_is_the_paper_rule_and_next_eps_counts_from_zero():
    assert make_schedule() == q3r.schedules.PaperEps()
    eps_old, sigma, inf = (torch.tensor(v, dtype=torch.float64) for v in (0.5, 2.0, math.inf))
    warmup = make_schedule({"name": "warmup", "reweightings": 1})
    # the first reweighting (count 0 by default) is still in the warm-up: eps follows sigma_{r+1} upward
    assert next_eps(warmup, eps_old, sigma, inf).item() == 2.0
    assert next_eps(warmup, eps_old, sigma, inf, count=1).item() == 0.5     # then the running minimum

"""Q3R in the loss: a differentiable penalty whose gradient is R(W), refreshed every period."""
import numpy as np
import pytest
import torch
from torch import nn

import q3r
from tests.reference import fit_ref, q3r_value_ref, reweight_ref


def test_penalty_value_and_gradient_match_reference():
    torch.manual_seed(0)
    lins = [nn.Linear(10, 16, bias=False).double(), nn.Linear(16, 10, bias=False).double()]
    pen = q3r.Q3RPenalty(lins, target_rank=3, period=4, svd="exact")
    value = pen.penalty()
    value.backward()
    expected = 0.0
    for lin in lins:
        W = lin.weight.detach().numpy()
        eps, _, _ = fit_ref(W, 3)
        expected += q3r_value_ref(W, eps, W)
        np.testing.assert_allclose(lin.weight.grad.numpy(), reweight_ref(W, eps, W), rtol=1e-9, atol=1e-12)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_penalty_refreshes_every_period_only():
    torch.manual_seed(0)
    lin = nn.Linear(12, 12, bias=False).double()
    pen = q3r.Q3RPenalty([lin], target_rank=0.3, period=3, svd="exact")
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    eps_prev, U_prev = None, None
    for step in range(7):
        W_before = lin.weight.detach().clone()
        loss = (lin.weight ** 3).sum() + 0.5 * pen.penalty()
        group = pen.bank.groups[0]
        if step % 3 == 0:
            fresh = q3r.ReweightingOperator.fit(W_before, 0.3, eps=eps_prev)
            assert float(group.eps[0]) == pytest.approx(fresh.eps, rel=1e-12)
            assert int((group.s < 0).sum()) == fresh.rank
        else:
            assert float(group.eps[0]) == eps_prev and torch.equal(group.U, U_prev)
        eps_prev, U_prev = float(group.eps[0]), group.U.clone()
        opt.zero_grad(); loss.backward(); opt.step()


def test_penalty_trains_weights_toward_low_rank():
    torch.manual_seed(0)
    lin = nn.Linear(20, 20, bias=False)
    pen = q3r.Q3RPenalty([lin], target_rank=0.1, period=5)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    tail = lambda: float(q3r.tail_ratio(torch.linalg.svdvals(lin.weight.detach()), 1))
    before = tail()
    for _ in range(200):
        loss = pen.penalty()
        opt.zero_grad(); loss.backward(); opt.step()
    assert tail() > before + 0.3      # energy concentrates in the top direction


def test_penalty_rejects_bad_period():
    with pytest.raises(ValueError, match="period=0"):
        q3r.Q3RPenalty([nn.Linear(4, 4)], period=0)


def test_bfloat16_weights_train_with_fp32_operators():
    torch.manual_seed(0)
    lin = nn.Linear(16, 24, bias=False).to(torch.bfloat16)
    opt = q3r.AdamQ3R(lin.parameters(), targets=[lin], target_rank=0.2, lmbda=0.5, lr=1e-2)
    before = lin.weight.detach().clone()
    lin.weight.grad = torch.zeros_like(lin.weight)
    opt.step()
    assert lin.weight.dtype == torch.bfloat16 and not torch.equal(lin.weight, before)
    assert opt.banks[0].groups[0].U.dtype == torch.float32
    pen = q3r.Q3RPenalty([lin], target_rank=0.2)
    pen.penalty().backward()
    assert lin.weight.grad.dtype == torch.bfloat16 and torch.isfinite(lin.weight.grad.float()).all()


def test_penalty_state_dict_holds_step_period_and_operators():
    lin = nn.Linear(8, 6, bias=False).double()
    pen = q3r.Q3RPenalty([lin], target_rank=0.3, period=4, svd="exact")
    pen.penalty(); pen.penalty()
    state = pen.state_dict()
    assert (state["step"], state["period"]) == (2, 4) and set(state) == {"step", "period", "operators"}


def test_penalty_hands_its_distributed_strategy_to_the_bank():
    """The bank checks the strategy (one process, no process group: nothing is shared either way)."""
    with pytest.raises(ValueError, match="distributed='allreduce'"):
        q3r.Q3RPenalty([nn.Linear(4, 4)], distributed="allreduce")
    assert q3r.Q3RPenalty([nn.Linear(4, 4)], distributed="share").bank.workers is None

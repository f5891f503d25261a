"""Properties from the paper and the documented API that mutation testing found unchecked
(``make mutants``; tests/MUTANTS.md lists what survives and why it is equivalent)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import q3r
from q3r.functional import effective_rank, q3r_value, reweight, shift, tail_ratio
from q3r.schedules import GeometricEps
from q3r.truncation import LowRankLinear, SpectralCache, kept_columns, numerical_rank, parameter_counts
from tests.reference import q3r_value_ref, reweight_ref



@pytest.fixture(autouse=True)
def float64():
    """The checks against the float64 reference run in float64; other test modules keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def factors(W: torch.Tensor, eps: float):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U, Vh.mT, shift(S, torch.as_tensor(eps))


# ---- batched math (the bank's shape groups) equals the per-matrix reference -----------------------
def test_reweight_and_value_of_a_batch_equal_the_reference_matrix_by_matrix():
    g = torch.Generator().manual_seed(0)
    Ws, Zs = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    eps = 0.8
    Us, Vs, ss = zip(*(factors(W, eps) for W in Ws))
    U, V, s = torch.stack(Us), torch.stack(Vs), torch.stack(ss)               # (G, d1, k), (G, d2, k), (G, k)
    out, val = reweight(Zs, U, V, s), q3r_value(Zs, U, V, s)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), reweight_ref(Ws[i], eps, Zs[i]), rtol=1e-10, atol=1e-12)
        assert val[i].item() == pytest.approx(q3r_value_ref(Ws[i], eps, Zs[i]), rel=1e-10)


def test_shift_is_zero_wherever_sigma_does_not_exceed_eps_even_at_zero_or_infinity():
    """s_i = eps / sigma_i - 1 for sigma_i > eps, else exactly 0: also at sigma_i = eps = 0 (a zero padding
    column under eps = 0) and at sigma_i = eps = inf, where eps / sigma_i would be NaN."""
    inf = math.inf
    sigma = torch.tensor([[inf, 2.0, 0.5, 0.0], [inf, 2.0, 0.5, 0.0], [inf, 2.0, 0.5, 0.0]])
    eps = torch.tensor([0.0, 0.5, inf])
    expected = [[0 / inf - 1, 0 / 2.0 - 1, 0 / 0.5 - 1, 0.0], [0.5 / inf - 1, 0.5 / 2.0 - 1, 0.0, 0.0], [0.0] * 4]
    assert shift(sigma, eps).tolist() == expected


@pytest.mark.parametrize("batch", [(3,), ()], ids=["batch", "one-matrix"])
def test_bfloat16_is_reweighted_with_one_rounding(batch):
    """R(Z) = Z + X Y of a (G, d1, d2) batch and of one (d1, d2) matrix (what ``ReweightingOperator``
    passes) is rounded once to bf16 (within half a bf16 unit of the float64 value of Z + X Y, up to
    float32 accumulation), also where Z and X Y nearly cancel (s near -1)."""
    from q3r.functional import reweight_factors

    g = torch.Generator().manual_seed(1)
    Z = torch.randn(*batch, 16, 12, generator=g).bfloat16()
    U = torch.linalg.qr(torch.randn(*batch, 16, 4, generator=g)).Q.bfloat16()
    V = torch.linalg.qr(torch.randn(*batch, 12, 4, generator=g)).Q.bfloat16()
    s = (-0.999 + 0.1 * torch.rand(*batch, 4, generator=g)).bfloat16()
    X, Y = (t.double() for t in reweight_factors(Z, U, V, s))
    ref = Z.double() + X @ Y
    out = reweight(Z, U, V, s)
    assert out.dtype == torch.bfloat16
    bound = 2.0 ** -8 * ref.abs() + 1e-6 * (Z.double().abs() + X.abs() @ Y.abs())
    assert ((out.double() - ref).abs() <= bound).all()


def test_diagnostics_of_a_batch_match_a_numpy_hand_computation():
    sigma = torch.tensor([[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    for row, e, t in zip(sigma.numpy(), effective_rank(sigma), tail_ratio(sigma, 2)):
        p = row / row.sum()
        assert e.item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
        assert t.item() == pytest.approx((row[:2] ** 2).sum() / (row ** 2).sum(), rel=1e-12)
    assert effective_rank(sigma)[1].item() == pytest.approx(4.0)               # flat spectrum: full rank


# ---- AdamQ3R at lmbda = 0 is torch's Adam, whatever Adam's options --------------------------------
def test_lmbda_zero_is_adam_with_decay_on_the_untargeted_groups_only():
    """Decoupled weight decay skips the regularized matrices (Q3R is their regularizer); a param group
    without any target is plain AdamW."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam([{"params": [a[0].weight], "weight_decay": 0.0}, {"params": [a[0].bias]},
                              {"params": [a[2].weight, a[2].bias], "lr": 3e-3}],
                             lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    opt_b = q3r.AdamQ3R([{"params": [b[0].weight, b[0].bias]}, {"params": [b[2].weight, b[2].bias], "lr": 3e-3}],
                        lr=1e-2, weight_decay=0.1, targets=[b[0].weight], lmbda=0.0, period=2)   # group 2: no target
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for _ in range(4):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_adamq3r_and_penalty_documented_defaults_and_options_reach_the_bank():
    lin = nn.Linear(12, 10)
    opt = q3r.AdamQ3R(lin.parameters(), targets=[lin.weight])
    assert (opt.defaults["lr"], opt.defaults["lmbda"], opt.defaults["period"], opt.defaults["target_rank"]) == \
        (1e-3, 0.1, 5, 0.2)
    pen = q3r.Q3RPenalty([lin.weight])
    assert pen.period == 5
    for bank in (opt.banks[0] if opt.banks else q3r.AdamQ3R(lin.parameters(), targets=[lin.weight],
                                                             period=1).banks[0], pen.bank):
        assert (bank.power_iters, bank.oversample) == (1, 8)
    custom = q3r.Q3RPenalty([lin.weight], period=1, eps_schedule="geometric", power_iters=3, oversample=5)
    assert isinstance(custom.bank.schedule, GeometricEps) and (custom.bank.power_iters, custom.bank.oversample) == (3, 5)
    opt = q3r.AdamQ3R(lin.parameters(), targets=[lin.weight], power_iters=3, oversample=5)
    opt.zero_grad(); lin(torch.randn(2, 12)).sum().backward(); opt.step()
    assert (opt.banks[0].power_iters, opt.banks[0].oversample) == (3, 5)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="period"):
            q3r.Q3RPenalty([lin.weight], period=bad)


@pytest.mark.parametrize("rank, ok", [(1.0, True), (1, True), (2, True), (0.0, False), (1.5, False), (0, False),
                                      (True, False)])
def test_target_rank_bounds(rank, ok):
    lin = nn.Linear(12, 10)
    if ok:
        q3r.AdamQ3R(lin.parameters(), targets=[lin.weight], target_rank=rank)
    else:
        with pytest.raises(ValueError):
            q3r.AdamQ3R(lin.parameters(), targets=[lin.weight], target_rank=rank)
    q3r.AdamQ3R(lin.parameters(), lr=0.0, targets=[lin.weight])                 # lr = 0 is allowed, as in Adam


def test_rank_formula_edges():
    assert q3r.resolve_rank((4, 7, 5), 0.5) == q3r.target_rank((7, 5), 0.5)      # the last two dims of a batch
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        q3r.resolve_rank((7, 5), 5)


# ---- truncation: what is stored --------------------------------------------------------------------
@pytest.mark.parametrize("W, rank", [(torch.eye(5), 5), (torch.ones(1, 6), 1), (torch.ones(4, 3), 1),
                                     (torch.zeros(3, 3), 0)])
def test_numerical_rank_matches_matrix_rank(W, rank):
    S = torch.linalg.svdvals(W)
    assert numerical_rank(S, W.shape) == rank == int(torch.linalg.matrix_rank(W))


def test_a_matrix_is_stored_dense_when_its_factors_would_not_be_smaller():
    assert kept_columns((2, 2), 2, 1.0) is None and kept_columns((2, 2), 1, 1.0) is None    # 1 * 4 == 4: dense
    assert kept_columns((3, 3), 1, 1.0) == 1                                                   # 6 < 9: factors


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 12, bias=False), nn.ReLU())
        self.out = nn.Linear(12, 4)
        self.M = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):                                                      # (B, T, 8)
        return self.out(self.block(x))


def test_nested_and_bias_free_linears_factorize_and_run_on_sequences():
    torch.manual_seed(0)
    model = Nested()
    cache = SpectralCache([model.block[0], model.out])
    fact = cache.factorized_model(model, 0.3)
    assert isinstance(fact.block[0], LowRankLinear) and fact.block[0].bias is None
    x = torch.randn(2, 5, 8)                                                   # 3-D input: (B, T, d)
    torch.testing.assert_close(fact(x), cache.truncated_model(model, 0.3)(x))
    assert fact.block[0].to_linear().bias is None                              # bias-free stays bias-free
    lin = fact.out.to_linear()
    assert (lin.in_features, lin.out_features) == (12, 4)
    torch.testing.assert_close(lin(x[0, :, :4].new_ones(3, 12)), fact.out(x[0, :, :4].new_ones(3, 12)))
    with pytest.raises(ValueError, match="not the weight of a named Linear"):
        SpectralCache([model.M]).factorized_model(model, 0.3)


def test_a_segment_in_the_middle_keeps_the_rows_around_it_dense():
    torch.manual_seed(0)
    lin = nn.Linear(5, 9)
    W = lin.weight.detach()
    A, B = torch.randn(3, 2), torch.randn(2, 5)
    low = LowRankLinear.from_linear(lin, [(3, 6, (A, B))])
    torch.testing.assert_close(low.merged_weight(), torch.cat([W[:3], A @ B, W[6:]]))
    assert [k in low.dense for k in low.order] == [True, False, True]


def test_bfloat16_weights_are_truncated_and_counted_through_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8)).to(torch.bfloat16)
    targets = [model[0], model[2]]
    cache = SpectralCache(targets)
    fact = cache.factorized_model(model, 0.2)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert fact(x).dtype == torch.bfloat16
    assert parameter_counts(model, targets, 0.2) == cache.counts(model, 0.2)
    assert set(parameter_counts(model, targets, 0.2)) == {"targets", "targeted_dense", "targeted_kept",
                                                          "model_dense", "model_kept"}


def test_operator_checks_its_factors_and_honours_the_schedule():
    W = torch.randn(6, 5)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    with pytest.raises(ValueError):
        q3r.ReweightingOperator(U[:, :2], S[:3], Vh.mT[:, :3], 0.5)
    with pytest.raises(ValueError):
        q3r.ReweightingOperator(U[:, :3], S[:3], Vh.mT[:, :2], 0.5)
    first = q3r.ReweightingOperator.fit(W, 2)
    again = q3r.ReweightingOperator.fit(W, 2, eps=first.eps * 10, schedule=GeometricEps(decay=0.5, floor=0.0))
    assert again.eps == pytest.approx(first.eps * 5)                           # decay, not min(eps, sigma_3)

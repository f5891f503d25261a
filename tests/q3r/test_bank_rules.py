"""OperatorBank's host-side rules (q3r/bank.py): the counts in ``fits``, k_apply's floor of one column,
the width's grow and shrink thresholds, ``values(detach=True)`` and the error before the first fit, the applied
factors' cut to k_apply columns, a packed group's stacked buffer, and ritz_tol's boundary."""
import pytest
import torch
from torch import nn

from q3r.bank import OperatorBank
from q3r.targets import Target


def flat(d1, d2, seed):
    return torch.randn(d1, d2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _bank(weights, rank, **kw):
    params = [nn.Parameter(w.clone()) for w in weights]
    return OperatorBank([Target(p, f"w{i}") for i, p in enumerate(params)], target_rank=rank, **kw), params


def test_values_need_a_fit_and_are_detached_on_request():
    bank, _ = _bank([flat(12, 9, s) for s in range(3)], 3)
    with pytest.raises(RuntimeError) as info:
        bank.values()
    assert str(info.value) == "the reweighting operators are not fitted yet: call refresh() first"
    bank.refresh()
    attached, detached = bank.values(), bank.values(detach=True)
    assert all(v.requires_grad for _, v in attached) and not any(v.requires_grad for _, v in detached)
    assert all(torch.equal(a.detach(), d) for (_, a), (_, d) in zip(attached, detached))


@pytest.mark.parametrize("refine_iters", [0, 2])
def test_fits_count_refreshes_refinements_and_full_svds(refine_iters):
    """Two flat-spectrum 48 x 40 matrices; the second refresh after one of them moved: that one's Ritz value
    has not converged. With refine_iters = 0 nothing is refined (and nothing counted as refined)."""
    bank, params = _bank([flat(48, 40, 4), flat(48, 40, 5)], 4, refine_iters=refine_iters)
    bank.refresh()
    with torch.no_grad():
        params[0].copy_(0.5 * flat(48, 40, 6))
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 4, "refine": 1 if refine_iters else 0, "svd": 3}
    bank.refresh()                                  # the same weights: both converge, the counts add nothing
    assert dict(bank.fits) == {"refresh": 6, "refine": 1 if refine_iters else 0, "svd": 3}


def test_an_exact_bank_counts_a_full_svd_per_matrix_per_refresh():
    bank, _ = _bank([flat(12, 9, s) for s in range(3)], 3, svd="exact")
    for _ in range(2):
        bank.refresh()
    assert dict(bank.fits) == {"refresh": 6, "refine": 0, "svd": 6}


def test_the_applied_factors_are_cut_to_the_columns_with_a_nonzero_shift():
    """After the first fit r_env = r = 4 of 13 carried columns: U, V, s come cut to k_apply = 4 columns,
    every one of them with s < 0, and the columns left out have s = 0 (they would add nothing)."""
    bank, _ = _bank([flat(48, 40, 4), flat(48, 40, 5)], 4)
    bank.refresh()
    group = bank.groups[0]
    U, V, s = group.factors()
    assert (group.k_apply, group.width) == (4, 13)
    assert (U.shape, V.shape, s.shape) == ((2, 48, 4), (2, 40, 4), (2, 4))
    assert torch.equal(U, group.U[..., :4]) and torch.equal(V, group.V[..., :4]) and torch.equal(s, group.s[..., :4])
    assert (s < 0).all() and (group.s[..., 4:] == 0).all()


def test_a_packed_group_reads_its_buffer_and_otherwise_a_copy():
    """pack=True: the constructor packs the weights (the parameters are views of one buffer from then on);
    stacked() is that buffer itself, detached; stacked(detach=False) a copy that carries gradients. Unpacked:
    stacked() is a detached copy."""
    bank, params = _bank([flat(12, 9, s) for s in range(2)], 3, pack=True)
    group = bank.groups[0]
    assert params[0].untyped_storage().data_ptr() == params[1].untyped_storage().data_ptr()
    W = group.stacked()
    assert W is group.packed.buffer() and not W.requires_grad
    assert W.data_ptr() == params[0].data_ptr() and torch.equal(W[1], params[1].detach())
    attached = group.stacked(detach=False)
    assert attached.requires_grad and attached.data_ptr() != W.data_ptr() and torch.equal(attached.detach(), W)
    plain, params = _bank([flat(12, 9, s) for s in range(2)], 3)
    W = plain.groups[0].stacked()
    assert not W.requires_grad and W.data_ptr() != params[0].data_ptr()
    assert torch.equal(W, torch.stack([p.detach() for p in params]))


def test_a_ritz_residual_equal_to_ritz_tol_counts_as_converged():
    """At most ritz_tol: W = diag(3, 1), the second Ritz triplet (e2, 0.5, e2) has residual
    |1 - 0.5| / 0.5 = 1 exactly, converged at ritz_tol 1, not at 0.999 (s = 0.25: residual 3)."""
    W = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)).unsqueeze(0)
    eye = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    for tol, expected in ((1.0, True), (0.999, False)):
        bank, _ = _bank([W[0]], 1, ritz_tol=tol, oversample=0)
        group = bank.groups[0]
        assert group.rank == 1
        for s, conv in ((0.5, expected), (0.25, False)):
            S = torch.tensor([[3.0, s]], dtype=torch.float64)
            assert bank._converged(group, W, eye, S, eye).tolist() == [conv]


def test_a_matrix_without_operator_applies_one_column():
    """Zero weights (a Delta W at the start of fine-tuning): sigma_{r+1} = 0, so eps stays +inf (R = I), r_env
    = 0, and the group applies one leading column (k_apply >= 1), at the first (exact) fit and at the next,
    which fits the members without operator exactly again (a full SVD each, in the warm path)."""
    bank, _ = _bank([torch.zeros(12, 9, dtype=torch.float64)] * 2, 3)
    for _ in range(2):
        bank.refresh()
        group = bank.groups[0]
        assert torch.isinf(group.eps).all() and group.k_apply == 1
    assert dict(bank.fits) == {"refresh": 4, "refine": 0, "svd": 4}


def test_the_width_grows_when_r_env_nears_it_and_shrinks_when_far_below():
    """Too narrow: r_env + 1 > width - oversample // 2, and a wider fit is possible; shrunk to the width
    r_env needs when that is below width - oversample."""
    bank, _ = _bank([flat(60, 50, 0)], 3, oversample=7)     # oversample // 2 = 3
    group = bank.groups[0]
    group.width = 20
    assert [bank._too_narrow(group, r) for r in (15, 16, 17)] == [False, False, True]
    group.width = 50                                          # as wide as the matrix: cannot grow
    assert not bank._too_narrow(group, 48)
    bank.oversample = 8                                       # oversample // 2 = 4
    group.width = 20
    assert [bank._too_narrow(group, r) for r in (14, 15, 16)] == [False, False, True]
    group.width = 30                                          # width for r_env 13: 14 + 8 = 22 = 30 - 8: kept
    assert not bank._resize(group, 13) and group.width == 30
    assert not bank._resize(group, 12) and group.width == 21    # 21 < 22: shrunk
    assert not bank._resize(group, 1) and group.width == 12     # at least rank + 1 columns: 4 + 8


def test_the_first_fit_counts_r_env_strictly_above_eps():
    """Paper rule: the first eps is sigma_{r+1} itself, which is not above itself: r_env = r, k_apply = r, and
    the width is r + 1 + oversample."""
    bank, params = _bank([flat(48, 40, 4), flat(48, 40, 5)], 4)
    bank.refresh()
    group = bank.groups[0]
    exact = torch.linalg.svdvals(torch.stack([p.detach() for p in params]))
    assert group.eps.tolist() == pytest.approx(exact[:, 4].tolist(), rel=1e-12)
    assert torch.equal(group.eps, group.sigma[:, 4])
    assert (group.k_apply, group.width) == (4, 4 + 1 + 8)


def test_the_documented_defaults():
    """target_rank 0.2, the paper's eps rule, warm SVDs with one power iteration, 8 spare columns, ritz_tol
    0.005, two refinement iterations, no packing."""
    from q3r.ranks import target_rank
    from q3r.schedules import PaperEps

    bank, _ = _bank([flat(48, 40, 0)], 0.2)
    default = OperatorBank(bank.targets)
    assert default.groups[0].rank == target_rank((48, 40), 0.2) == bank.groups[0].rank
    assert type(default.schedule) is PaperEps
    assert (default.svd, default.power_iters, default.oversample) == ("warm", 1, 8)
    assert (default.ritz_tol, default.refine_iters) == (0.005, 2)
    assert default.groups[0].packed is None and default.groups[0].width == target_rank((48, 40), 0.2) + 1 + 8
    assert dict(default.fits) == {"refresh": 0, "refine": 0, "svd": 0} and default.reweightings == 0


@pytest.mark.parametrize("option, message", [
    ({"svd": "fast"}, "svd must be one of ('warm', 'exact'), but got svd='fast'"),
    ({"power_iters": 0}, "power_iters must be >= 1, but got power_iters=0"),
    ({"oversample": -1}, "oversample must be >= 0, but got oversample=-1"),
    ({"ritz_tol": 0.0}, "ritz_tol must be > 0, but got ritz_tol=0.0"),
    ({"refine_iters": -1}, "refine_iters must be >= 0, but got refine_iters=-1"),
])
def test_bad_options_are_refused_naming_the_value(option, message):
    with pytest.raises(ValueError) as info:
        _bank([flat(12, 9, 0)], 3, **option)
    assert str(info.value) == message

"""OperatorBank's warm path with several members (q3r/bank.py): laggards refined and refitted by their own
index, members without operator at the width's limit, one subspace iteration per refinement, the settled rule
for small weights, the accelerator path's converged members, and a device checkpoint resumed on CPU.
Widening: only the members at the width's edge by full SVD. References: numpy's float64 SVD of each matrix
and the operator of tests/reference.py."""
import numpy as np
import pytest
import torch
from torch import nn

from q3r.bank import OperatorBank
from q3r.targets import Target
from tests.reference import reweight_ref


def flat(d1, d2, seed):
    return torch.randn(d1, d2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _bank(weights, rank, **kw):
    params = [nn.Parameter(w.clone()) for w in weights]
    return OperatorBank([Target(p, f"w{i}") for i, p in enumerate(params)], target_rank=rank, **kw), params


def svdvals(p) -> np.ndarray:
    return np.linalg.svd(p.detach().numpy(), compute_uv=False)


def test_two_laggards_of_three_are_refined_and_refitted_each_by_its_own_index():
    """Members 0 and 2 replaced by new matrices with smaller singular values (their warm estimates do not
    converge in the extra iterations, and could lower eps), member 1 kept: the two get a full SVD each,
    their eps is their own sigma_{r+1}; member 1 keeps its eps."""
    bank, params = _bank([flat(48, 40, s) for s in (2, 3, 4)], 4)
    bank.refresh()
    g = bank.groups[0]
    eps1 = g.eps[1].item()
    with torch.no_grad():
        params[0].copy_(0.5 * flat(48, 40, 10))
        params[2].copy_(0.5 * flat(48, 40, 11))
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 6, "refine": 2, "svd": 3 + 2}
    for i in (0, 2):
        assert g.eps[i].item() == pytest.approx(svdvals(params[i])[4], rel=1e-12)
        np.testing.assert_allclose(g.sigma[i].numpy(), svdvals(params[i])[: g.width], rtol=1e-12)
    assert g.eps[1].item() == pytest.approx(eps1, rel=1e-12)     # its warm estimate of the same matrix


@pytest.mark.parametrize("schedule, refit", [("paper", False), ({"name": "linear", "steps": 10}, True)],
                         ids=["paper", "linear"])
def test_members_without_operator_widen_the_group_only_when_r_env_reaches_the_width(schedule, refit):
    """Rank 1, no spare columns (width 2): member 0 fitted, members 1-3 zero (no operator), then given
    weights. Their first fits (full SVDs) count r_env = 1 each, strictly above eps = sigma_2: not too
    narrow for width 2, whatever the number of such members. Paper rule: the width stays. Linear
    schedule: member 0's eps decays below its sigma_2, its r_env reaches the width: the group widens to
    the full width 9 (eps decayed by (1e-5 / eps_0)^(1/10): r_env 8), member 0 by one more full SVD, the
    three first fits from their own; every member holds its exact leading triplets."""
    bank, params = _bank([flat(12, 9, 0)] + [torch.zeros(12, 9, dtype=torch.float64)] * 3, 1, oversample=0,
                         eps_schedule=schedule)
    bank.refresh()
    g = bank.groups[0]
    assert g.fresh == [1, 2, 3] and g.width == 2
    with torch.no_grad():
        for i in (1, 2, 3):
            params[i].copy_(flat(12, 9, 10 + i))
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 8, "refine": 0, "svd": 4 + 3 + (1 if refit else 0)}
    assert (g.width, g.k_apply, g.fresh) == ((9, 8, []) if refit else (2, 1, []))
    for i in range(4):
        np.testing.assert_allclose(g.sigma[i].numpy(), svdvals(params[i])[: g.width], rtol=1e-12)
    for i in (1, 2, 3):                                # every schedule's first eps is sigma_{r+1}
        assert g.eps[i].item() == pytest.approx(svdvals(params[i])[1], rel=1e-12)


def spectrum(s, seed, d1=48, d2=40):
    """A d1 x d2 matrix with singular values s (then zeros) on the singular vectors of flat(d1, d2, seed)."""
    U, _, Vh = torch.linalg.svd(flat(d1, d2, seed), full_matrices=False)
    s = torch.tensor(list(s) + [0.0] * (d2 - len(s)), dtype=torch.float64)
    return (U * s) @ Vh


def test_only_the_members_at_the_edge_get_a_full_svd_when_the_group_widens():
    """Rank 4, oversample 7: width 12, the edge at r_env + 1 > 12 - 3. Members 0, 2 and 3 grow singular
    values above eps = 6 on the same singular vectors (their warm estimates are exact): member 0 to r_env 12
    and member 3 to 9, past the edge, so the group carries 12 + 1 + 7 = 20 columns; member 2 to 8, just
    inside it. Members 0 and 3 take their columns from a full SVD each; members 1 (unchanged, r_env 4) and 2
    keep their warm triplets, padded: zero U and sigma columns, V's new columns orthonormal to its old ones,
    drawn without touching torch's global random state. Every operator equals the reference operator at
    its own eps."""
    tail = [0.5 * 0.9 ** i for i in range(20)]
    start = [10, 9, 8, 7, 6] + tail
    bank, params = _bank([spectrum(start, seed) for seed in (1, 2, 3, 4)], 4, oversample=7)
    bank.refresh()
    g = bank.groups[0]
    assert (g.width, g.k_apply) == (12, 4)
    grown = [10, 9, 8, 7, 6.8, 6.7, 6.6, 6.5, 6.4, 6.3, 6.2, 6.1]     # 12 singular values above 6
    with torch.no_grad():
        params[0].copy_(spectrum(grown + tail, 1))
        params[2].copy_(spectrum(grown[:8] + tail, 3))
        params[3].copy_(spectrum(grown[:9] + tail, 4))
    rng = torch.random.get_rng_state()
    bank.refresh()
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert dict(bank.fits) == {"refresh": 8, "refine": 0, "svd": 4 + 2}
    assert (g.width, g.k_apply) == (20, 12)
    np.testing.assert_allclose(g.eps.numpy(), [6.0] * 4, rtol=1e-12)
    for i in (0, 3):
        np.testing.assert_allclose(g.sigma[i].numpy(), svdvals(params[i])[:20], rtol=1e-12)
    for i in (1, 2):
        np.testing.assert_allclose(g.sigma[i, :12].numpy(), svdvals(params[i])[:12], rtol=1e-12)
        assert not g.sigma[i, 12:].any() and not g.U[i, :, 12:].any()
        np.testing.assert_allclose(g.V[i].numpy().T @ g.V[i].numpy(), np.eye(20), atol=1e-12)
    Z = flat(48, 40, 9)
    for i in range(4):
        want = reweight_ref(params[i].detach(), g.eps[i].item(), Z)
        np.testing.assert_allclose(bank.operators()[f"w{i}"](Z).numpy(), want, atol=1e-10)


def test_one_refinement_is_one_subspace_iteration():
    """W1 = 0.9 (W0 + 0.1 P): from W0's subspace, the (r+1)-th Ritz residual is 0.011 after two subspace
    iterations and 0.0046 after three (ritz_tol 0.005). With one refinement (two iterations in all) the
    matrix falls back to a full SVD; with two refinements it converges without one."""
    W1 = 0.9 * (flat(48, 40, 2) + 0.1 * flat(48, 40, 20))
    fits = {}
    for refine_iters in (1, 2):
        bank, params = _bank([flat(48, 40, 2)], 4, refine_iters=refine_iters)
        bank.refresh()
        with torch.no_grad():
            params[0].copy_(W1)
        bank.refresh()
        fits[refine_iters] = dict(bank.fits)
        assert bank.groups[0].eps.item() == pytest.approx(svdvals(params[0])[4], rel=1e-3)
    assert fits[1] == {"refresh": 2, "refine": 1, "svd": 2}
    assert fits[2] == {"refresh": 2, "refine": 1, "svd": 1}


def test_an_unconverged_estimate_at_or_above_eps_gets_no_full_svd_for_small_weights():
    """The settled rule does not depend on the scale: singular values below 1 (weights / 100) as in
    test_warm_eps.py's test at scale 1: neither refined nor fitted by full SVD, eps kept exactly."""
    bank, params = _bank([flat(48, 40, 2) / 100, flat(48, 40, 3) / 100], 4)
    bank.refresh()
    g = bank.groups[0]
    eps0 = g.eps.clone()
    assert g.sigma[:, 4].max() < 1
    with torch.no_grad():
        params[0].copy_(1.1 * flat(48, 40, 4) / 100)      # a new matrix, larger singular values
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 4, "refine": 0, "svd": 2}
    assert eps0[0] < g.sigma[0, 4] <= svdvals(params[0])[4] * (1 + 1e-12)
    assert g.eps[0] == eps0[0]                                    # = min(eps, sigma_{r+1}) exactly
    assert g.eps[1].item() == pytest.approx(eps0[1].item(), rel=1e-12)


def test_accelerator_path_lowers_eps_with_a_converged_value(monkeypatch):
    """Accelerator path (no read-back, forced on CPU): member 1 scaled by 0.9 (its old subspace is exact:
    converged) lowers its eps to its new sigma_{r+1} at once; member 0, a new matrix, does not converge
    and keeps its eps until the next reweighting. Only member 0 is flagged."""
    bank, params = _bank([flat(48, 40, 4), flat(48, 40, 5)], 4)
    monkeypatch.setattr(bank, "_reads_now", lambda W: False)
    bank.refresh()
    g = bank.groups[0]
    eps0 = g.eps.clone()
    with torch.no_grad():
        params[0].copy_(0.5 * flat(48, 40, 6))
        params[1].mul_(0.9)
    bank.refresh()
    assert g.pending[1].tolist() == [True, False]
    assert g.eps[0] == eps0[0]
    assert g.eps[1].item() == pytest.approx(svdvals(params[1])[4], rel=1e-12)
    assert g.eps[1].item() == pytest.approx(0.9 * eps0[1].item(), rel=1e-12)


@pytest.mark.parametrize("svd", ["warm", "exact"])
def test_a_checkpoint_with_device_answers_resumes_on_cpu(monkeypatch, svd):
    """A state saved with an accelerator's pending answers (member 0 unconverged), loaded into a CPU bank:
    the first refresh acts on them (warm: a full SVD for member 0 only; exact: full SVDs for all, as
    always) and leaves nothing pending and no device answers for other ranks to read; the next refresh
    runs on. eps ends at each matrix's sigma_{r+1}."""
    device, params = _bank([flat(48, 40, 4), flat(48, 40, 5)], 4)
    monkeypatch.setattr(device, "_reads_now", lambda W: False)
    device.refresh()
    with torch.no_grad():
        params[0].copy_(0.5 * flat(48, 40, 6))
    device.refresh()
    assert device.groups[0].pending[1].tolist() == [True, False]
    bank, params2 = _bank([p.detach() for p in params], 4, svd=svd)
    bank.load_state_dict(device.state_dict())
    g = bank.groups[0]
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 2, "refine": 0, "svd": 1 if svd == "warm" else 2}
    assert g.pending is None and g.answers is None
    bank.refresh()
    assert dict(bank.fits) == {"refresh": 4, "refine": 0, "svd": 1 if svd == "warm" else 4}
    assert g.pending is None and g.answers is None
    for i in range(2):
        assert g.eps[i].item() == pytest.approx(svdvals(params2[i])[4], rel=1e-9)

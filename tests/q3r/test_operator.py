"""ReweightingOperator (Definition 4.1, Algorithm 1) against the dense float64 reference."""
import math

import numpy as np
import pytest
import torch

from q3r.operator import ReweightingOperator

from tests.reference import (
    fit_ref,
    grad_smoothed_logdet,
    q3r_value_ref,
    reweight_ref,
    singular_values,
    smoothed_logdet,
    target_rank_ref,
)

SHAPES = [(30, 12), (12, 30), (20, 20)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RTOL = 1e-9


def randn(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def spread_matrix(d1, d2, seed, decay=0.85):
    """A matrix with well separated, decaying singular values (no near-ties at eps)."""
    g = torch.Generator().manual_seed(seed)
    Q1, _ = torch.linalg.qr(torch.randn(d1, d1, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(d2, d2, generator=g, dtype=torch.float64))
    k = min(d1, d2)
    sig = 5.0 * decay ** torch.arange(k, dtype=torch.float64)
    return (Q1[:, :k] * sig) @ Q2[:, :k].T


def assert_close(actual, expected, rtol=RTOL, input_scale=0.0):
    """allclose with atol = rtol * (largest |expected| entry, or the input's, if larger).

    The input's scale matters where R shrinks its input a lot (eps << sigma): rounding
    errors are relative to the input there, not to the tiny output.
    """
    actual = np.asarray(actual.detach().cpu().double() if torch.is_tensor(actual) else actual)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), float(input_scale))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def check_against_reference(op, W, r, eps_old=math.inf, seed=0):
    eps, r_env, sig = fit_ref(W, r, eps_old)
    assert op.eps == pytest.approx(eps, rel=1e-12, abs=0)
    assert op.rank == r_env
    assert op.sigma.shape[-1] == r_env
    assert_close(op.sigma, sig, rtol=1e-12)
    d1, d2 = W.shape
    assert op.shape == (d1, d2)
    for k in range(3):
        Z = randn(d1, d2, seed=1000 + seed * 10 + k)
        assert_close(op(Z), reweight_ref(W, eps, Z), input_scale=Z.abs().max())
        assert op.value(Z).item() == pytest.approx(q3r_value_ref(W, eps, Z), rel=RTOL)
    # at Z = W' itself (the case AdamQ3R uses)
    assert_close(op(W), reweight_ref(W, eps, W), input_scale=W.abs().max())
    assert op.value(W).item() == pytest.approx(q3r_value_ref(W, eps, W), rel=RTOL)
    return eps, r_env


# ---- the first fit ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [0.2, 0.5, 3])
def test_first_fit_matches_reference(shape, rank):
    W = randn(*shape, seed=sum(shape) + (rank if isinstance(rank, int) else int(rank * 10)))
    op = ReweightingOperator.fit(W, rank)
    r = rank if isinstance(rank, int) else target_rank_ref(*shape, rank)
    eps, r_env = check_against_reference(op, W, r)
    # first fit: eps = sigma_{r+1}(W), and exactly r singular values lie above it
    assert eps == pytest.approx(singular_values(W)[r], rel=1e-13)
    assert r_env == r


@pytest.mark.parametrize("shape", SHAPES)
def test_target_ranks_at_the_clamps(shape):
    d1, d2 = shape
    W = randn(*shape, seed=7)
    for rank, expected_r in [(1, 1), (min(shape) - 1, min(shape) - 1), (0.01, 1), (1e-9, 1),
                             (1.0, target_rank_ref(d1, d2, 1.0))]:
        op = ReweightingOperator.fit(W, rank)
        assert op.rank == expected_r
        check_against_reference(op, W, expected_r)


@pytest.mark.parametrize("shape", SHAPES)
def test_refit_after_growth_has_r_env_above_target(shape):
    """eps never increases: after singular values grow, more than r of them exceed eps."""
    W = spread_matrix(*shape, seed=3)
    r = target_rank_ref(*shape, 0.2)
    op = ReweightingOperator.fit(W, 0.2)
    eps1, r1 = check_against_reference(op, W, r)
    assert r1 == r

    W3 = 3.0 * W
    op3 = ReweightingOperator.fit(W3, 0.2, eps=op.eps)
    eps3, r3 = check_against_reference(op3, W3, r, eps_old=op.eps, seed=1)
    assert eps3 == pytest.approx(eps1, rel=1e-12)       # min(eps1, 3 sigma_{r+1}) = eps1
    assert r3 > r                                        # r_env exceeds the target rank

    # a big low-rank bump on top of W also pushes r_env past the target
    g = torch.Generator().manual_seed(11)
    k = r + 4
    bump = 4.0 * torch.randn(shape[0], k, generator=g, dtype=torch.float64) @ \
        torch.randn(k, shape[1], generator=g, dtype=torch.float64) / math.sqrt(k)
    Wb = W + bump
    opb = ReweightingOperator.fit(Wb, 0.2, eps=op.eps)
    _, rb = check_against_reference(opb, Wb, r, eps_old=op.eps, seed=2)
    assert rb > r


def test_refit_with_smaller_sigma_lowers_eps():
    W = spread_matrix(20, 20, seed=4)
    op = ReweightingOperator.fit(W, 5)
    W_half = 0.5 * W
    op2 = ReweightingOperator.fit(W_half, 5, eps=op.eps)
    check_against_reference(op2, W_half, 5, eps_old=op.eps)
    assert op2.eps < op.eps
    assert op2.eps == pytest.approx(singular_values(W_half)[5], rel=1e-13)


def test_eps_above_every_sigma_is_the_identity():
    W = randn(12, 30, seed=5)
    assert singular_values(W)[-1] > 1e-3
    op = ReweightingOperator.fit(W, 3, eps=1e-3)
    Z = randn(12, 30, seed=6)
    # tiny eps: every sigma is above eps, r_env = min(d1, d2), R shrinks W a lot
    _, r_env = check_against_reference(op, W, 3, eps_old=1e-3)
    assert r_env == 12
    # huge eps (no triplet above it): R is the identity
    big = ReweightingOperator(op.U[:, :0], op.sigma[:0], op.V[:, :0], eps=1e6)
    assert_close(big(Z), Z.numpy())
    assert_close(big(Z), reweight_ref(W, 1e6, Z))


# ---- Lemma A.4 and the gradient of the Q3R value -------------------------------------------

def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4))
    eps = float(singular_values(W)[1])              # some sigma above, some below eps
    G = grad_smoothed_logdet(W, eps)
    h = 1e-6
    fd = np.zeros_like(W)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            E = np.zeros_like(W)
            E[i, j] = h
            fd[i, j] = (smoothed_logdet(W + E, eps) - smoothed_logdet(W - E, eps)) / (2 * h)
    np.testing.assert_allclose(fd, G, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 0.2, 0.5])
def test_lemma_a4_gradient_condition(shape, rank):
    """R_{W,eps}(W) = grad F_eps(W), from the library operator and from the reference."""
    W = randn(*shape, seed=42 + shape[0])
    op = ReweightingOperator.fit(W, rank)
    G = grad_smoothed_logdet(W, op.eps)
    assert_close(reweight_ref(W, op.eps, W), G, rtol=1e-11)
    assert_close(op(W), G, rtol=1e-11)
    # also at an eps that is not a singular value
    eps = 0.7 * op.eps
    op2 = ReweightingOperator.fit(W, rank, eps=eps)
    assert op2.eps == eps
    assert_close(op2(W), grad_smoothed_logdet(W, eps), rtol=1e-11)


@pytest.mark.parametrize("shape", SHAPES)
def test_autograd_of_value_is_the_operator(shape):
    W = randn(*shape, seed=8)
    op = ReweightingOperator.fit(W, 0.2)
    Z = randn(*shape, seed=9).requires_grad_(True)
    val = op.value(Z)
    (grad,) = torch.autograd.grad(val, Z)
    assert_close(grad, op(Z.detach()).numpy(), rtol=1e-12)
    assert_close(grad, reweight_ref(W, op.eps, Z.detach()))


def test_operator_is_self_adjoint_and_positive_definite():
    W = randn(12, 30, seed=10)
    op = ReweightingOperator.fit(W, 0.2)
    A, B = randn(12, 30, seed=11), randn(12, 30, seed=12)
    lhs = (A * op(B)).sum().item()
    rhs = (op(A) * B).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-12)
    assert op.value(A).item() > 0
    assert op.value(torch.zeros(12, 30, dtype=torch.float64)).item() == 0.0


def test_fit_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        ReweightingOperator.fit(randn(2, 5, 5, seed=0), 1)


# ---- other dtypes and devices ---------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_float32(shape):
    W64 = spread_matrix(*shape, seed=13)
    W = W64.float()
    op = ReweightingOperator.fit(W, 0.2)
    assert op.U.dtype == torch.float32
    r = target_rank_ref(*shape, 0.2)
    eps, r_env, _ = fit_ref(W, r)
    assert op.eps == pytest.approx(eps, rel=1e-5)
    assert op.rank == r_env
    Z = randn(*shape, seed=14, dtype=torch.float32)
    out = op(Z)
    assert out.dtype == torch.float32
    assert_close(out, reweight_ref(W, eps, Z), rtol=1e-4)
    assert op.value(Z).item() == pytest.approx(q3r_value_ref(W, eps, Z), rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda(shape):
    W = spread_matrix(*shape, seed=15).cuda()
    r = target_rank_ref(*shape, 0.2)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        Wd = W.to(dtype)
        op = ReweightingOperator.fit(Wd, 0.2)
        assert op.U.is_cuda
        eps, r_env, _ = fit_ref(Wd, r)
        assert op.eps == pytest.approx(eps, rel=10 * rtol)
        assert op.rank == r_env
        Z = randn(*shape, seed=16).to("cuda", dtype)
        out = op(Z)
        assert out.is_cuda and out.dtype == dtype
        assert_close(out, reweight_ref(Wd, eps, Z), rtol=rtol)
        assert op.value(Z).item() == pytest.approx(q3r_value_ref(Wd, eps, Z), rel=rtol)


# ---- the batched bank behind AdamQ3R (Algorithm 1 for many matrices) ---------------------------

def _bank(shapes, rank, svd, oversample, seed=20, device="cpu"):
    from q3r.bank import OperatorBank
    from q3r.targets import Target
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64).to(device)) for s in shapes]
    targets = [Target(p, f"w{i}") for i, p in enumerate(params)]
    return OperatorBank(targets, target_rank=rank, svd=svd, oversample=oversample), params


def _check_bank(bank, params, rank, eps_old):
    ops = bank.operators()
    eps_new = {}
    for i, p in enumerate(params):
        op = ops[f"w{i}"]
        W = p.detach()
        r = rank if isinstance(rank, int) else target_rank_ref(*W.shape, rank)
        eps, r_env, sig = fit_ref(W, r, eps_old.get(f"w{i}", math.inf))
        assert op.eps == pytest.approx(eps, rel=1e-12), f"w{i}"
        assert op.rank == r_env, f"w{i}: r_env {op.rank} != {r_env}"
        Z = randn(*W.shape, seed=30 + i).to(W.device)
        assert_close(op(Z), reweight_ref(W, eps, Z), input_scale=Z.abs().max())
        assert_close(op(W), reweight_ref(W, eps, W), input_scale=W.abs().max())
        eps_new[f"w{i}"] = eps
    return eps_new


@pytest.mark.parametrize("svd", ["exact", "warm"])
def test_bank_first_refresh_matches_reference(svd):
    shapes = [(30, 12), (30, 12), (12, 30), (20, 20), (30, 12)]
    bank, params = _bank(shapes, 0.3, svd, oversample=2)
    assert len(bank.groups) == 3                               # batched by shape
    bank.refresh()
    _check_bank(bank, params, 0.3, {})
    # values() and total() are the Q3R values, differentiable in the weights
    ops = bank.operators()
    total = bank.total()
    expected = sum(q3r_value_ref(p, ops[f"w{i}"].eps, p) for i, p in enumerate(params))
    assert total.item() == pytest.approx(expected, rel=1e-10)
    total.backward()
    for i, p in enumerate(params):
        assert_close(p.grad, reweight_ref(p, ops[f"w{i}"].eps, p))


@pytest.mark.parametrize("svd", ["exact", "warm"])
@pytest.mark.parametrize("oversample", [0, 8])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bank_refresh_after_small_growth(svd, oversample, device, request):
    """A few singular values cross eps after growth; the operator must still be exact."""
    if device == "cuda" and oversample == 0:
        request.applymarker(pytest.mark.xfail(
            reason="by design (bank.py): on an accelerator a grown r_env is acted on only at the NEXT "
                   "reweighting, so with no oversample slack the operator is cut to the old width for a period"))
    bank, params = _bank([(40, 30)], 2, svd, oversample, device=device)
    bank.refresh()
    eps = _check_bank(bank, params, 2, {})
    with torch.no_grad():
        params[0].mul_(1.08)                                    # sigma_3.. move just above eps
    bank.refresh()
    _check_bank(bank, params, 2, eps)
    assert bank.operators()["w0"].rank > 2


@pytest.mark.parametrize("svd", ["exact", "warm"])
@pytest.mark.parametrize("oversample", [0, 8])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bank_refresh_after_large_growth(svd, oversample, device):
    """Algorithm 1 with eps_old: r_env = #{sigma_i > eps} can be far above the target rank
    (here 22 of 30 after W <- 3 W at target rank 2); the bank must size its SVD for it."""
    bank, params = _bank([(40, 30)], 2, svd, oversample, device=device)
    bank.refresh()
    eps = _check_bank(bank, params, 2, {})
    with torch.no_grad():
        params[0].mul_(3.0)
    bank.refresh()
    _check_bank(bank, params, 2, eps)


def test_penalty_gradient_is_the_reweighted_weight():
    from q3r.penalty import Q3RPenalty
    W = torch.nn.Parameter(randn(20, 14, seed=40))
    pen = Q3RPenalty([W], target_rank=0.3, period=2, svd="exact")
    val = pen()
    eps = fit_ref(W, target_rank_ref(20, 14, 0.3))[0]
    assert val.item() == pytest.approx(q3r_value_ref(W, eps, W), rel=1e-10)
    val.backward()
    assert_close(W.grad, reweight_ref(W, eps, W))
    assert pen.step == 1


def test_fit_passes_eps_first_to_the_linear_schedule():
    """The "linear" schedule decays from eps_first, not from the current eps: eps <- max(eps * c, final)
    with c = (final / eps_first)^(1 / steps), written out here; without eps_first it restarts from eps."""
    W = spread_matrix(20, 20, seed=7)
    steps, final, eps_old, eps_first = 4, 1e-3, 0.5, 2.0
    schedule = {"name": "linear", "steps": steps, "final": final}
    op = ReweightingOperator.fit(W, 5, eps=eps_old, schedule=schedule, eps_first=eps_first)
    assert op.eps == pytest.approx(max(eps_old * (final / eps_first) ** (1 / steps), final), rel=1e-12)
    restart = ReweightingOperator.fit(W, 5, eps=eps_old, schedule=schedule)
    assert restart.eps == pytest.approx(max(eps_old * (final / eps_old) ** (1 / steps), final), rel=1e-12)
    assert op.rank == int((singular_values(W) > op.eps).sum())


def test_factors_that_disagree_on_the_rank_are_refused_with_their_shapes():
    U, sigma, V = randn(5, 3, seed=0), torch.ones(2, dtype=torch.float64), randn(4, 3, seed=1)
    with pytest.raises(ValueError) as info:
        ReweightingOperator(U, sigma, V, 0.5)
    assert str(info.value).startswith("U, sigma, V disagree on the rank: U.shape=torch.Size([5, 3]), "
                                      "sigma.shape=torch.Size([2])")

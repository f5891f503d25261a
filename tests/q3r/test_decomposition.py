"""The warm-started partial SVD against a full SVD, at stated tolerances.

Stated tolerance (float64 inputs of the kinds training produces): after a drift of 1% of
the weight between reweightings, one warm iteration gives the leading r+1 singular values
within 1e-4 (relative) and R(W) within 1e-3 (relative, Frobenius) of the exact fit; a
stationary matrix converges to the exact triplets as reweightings repeat.
"""
import math

import numpy as np
import pytest
import torch

from q3r.decomposition import full_svd, warm_triplets
from q3r.functional import reweight, shift
from tests.reference import fit_ref, reweight_ref, singular_values


def decaying(G, d1, d2, seed, decay=0.15):
    """Matrices with a geometrically decaying spectrum, like weights under rank regularization."""
    g = torch.Generator().manual_seed(seed)
    k = min(d1, d2)
    U = torch.linalg.qr(torch.randn(G, d1, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(G, d2, k, generator=g, dtype=torch.float64)).Q
    sigma = torch.exp(-decay * torch.arange(k, dtype=torch.float64)) * (1 + 0.1 * torch.rand(G, k, generator=g, dtype=torch.float64))
    sigma = sigma.sort(-1, descending=True).values
    return (U * sigma.unsqueeze(-2)) @ V.mT, g


@pytest.mark.parametrize("shape", [(48, 48), (96, 40), (40, 96)])
def test_warm_start_after_drift_matches_exact(shape):
    d1, d2 = shape
    r, width = 6, 6 + 1 + 8
    W0, g = decaying(4, d1, d2, seed=1)
    V0 = torch.linalg.svd(W0).Vh[..., :width, :].mT              # the previous fit's subspace
    W = W0 + 0.01 * W0.norm(dim=(-2, -1), keepdim=True) / math.sqrt(d1 * d2) * torch.randn(W0.shape, generator=g, dtype=torch.float64)
    U, S, V = warm_triplets(W, V0)
    for i in range(W.shape[0]):
        Wi = W[i].numpy()
        exact_sigma = np.linalg.svd(Wi, compute_uv=False)
        np.testing.assert_allclose(S[i, : r + 1].numpy(), exact_sigma[: r + 1], rtol=1e-4)
        eps, r_env, _ = fit_ref(Wi, r)
        ours = reweight(W[i], U[i], V[i], shift(S[i], torch.tensor(float(S[i, r]))))
        ref = reweight_ref(Wi, eps, Wi)
        assert np.linalg.norm(ours.numpy() - ref) / np.linalg.norm(ref) < 1e-3


def test_stationary_matrix_converges_to_exact():
    W, g = decaying(3, 64, 48, seed=2, decay=0.05)                # a slow decay: hard for one iteration
    width = 20
    V = torch.linalg.qr(torch.randn(3, 48, width, generator=g, dtype=torch.float64)).Q
    errors = []
    exact = torch.linalg.svdvals(W)[..., :10]
    for _ in range(30):                                           # 30 reweightings of an unchanged W
        U, S, V = warm_triplets(W, V)
        errors.append(((S[..., :10] - exact).abs() / exact).max().item())
    assert errors[-1] < 1e-8 and errors[-1] < errors[0]
    torch.testing.assert_close(U.mT @ U, torch.eye(width, dtype=torch.float64).expand(3, -1, -1), atol=1e-10, rtol=0)


def test_warm_triplets_are_orthonormal_and_sorted_in_float32():
    W, g = decaying(5, 64, 64, seed=3)
    W = W.float()
    U, S, V = warm_triplets(W, torch.linalg.qr(torch.randn(5, 64, 12, generator=g)).Q)
    assert U.dtype == S.dtype == V.dtype == torch.float32
    assert torch.all(S[..., :-1] >= S[..., 1:])
    eye = torch.eye(12).expand(5, -1, -1)
    torch.testing.assert_close(V.mT @ V, eye, atol=1e-4, rtol=0)
    torch.testing.assert_close(U.mT @ U, eye, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30), (16, 16)])
def test_full_svd_tall_wide_square_against_numpy(shape):
    W, _ = decaying(3, *shape, seed=4)
    U, S, Vh = full_svd(W)
    k = min(shape)
    assert U.shape == (3, shape[0], k) and S.shape == (3, k) and Vh.shape == (3, k, shape[1])
    eye = torch.eye(k, dtype=torch.float64)
    for i in range(3):
        np.testing.assert_allclose(S[i].numpy(), singular_values(W[i]), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(U[i].mT @ U[i], eye, rtol=0, atol=1e-12)
        torch.testing.assert_close(Vh[i] @ Vh[i].mT, eye, rtol=0, atol=1e-12)
        torch.testing.assert_close((U[i] * S[i]) @ Vh[i], W[i], rtol=0, atol=1e-12)


def test_ritz_residual_matches_a_float64_reference_and_its_zero_value_rule():
    """||W v_i - sigma_i u_i|| / sigma_i, computed per matrix with numpy, on Ritz values below 1; a zero Ritz
    value gives +inf when W v_i is not 0, else 0."""
    from q3r.decomposition import ritz_residual

    g = torch.Generator().manual_seed(3)
    W = 0.05 * torch.randn(2, 9, 6, generator=g, dtype=torch.float64)
    V0 = torch.linalg.qr(torch.randn(2, 6, 3, generator=g, dtype=torch.float64)).Q
    U, S, V = warm_triplets(W, V0)
    assert 0 < S.min() and S.max() < 1
    for i in range(3):
        Wn, Un, Sn, Vn = (t.numpy() for t in (W, U, S, V))
        ref = [np.linalg.norm(Wn[j] @ Vn[j, :, i] - Sn[j, i] * Un[j, :, i]) / Sn[j, i] for j in range(2)]
        assert min(ref) > 1e-3                                  # one iteration from a random start
        assert ritz_residual(W, U, S, V, i).tolist() == pytest.approx(ref, rel=1e-12)
    e = torch.eye(4, dtype=torch.float64)[:, :1].unsqueeze(0)      # u = v = e_0, sigma = 0
    zero = torch.zeros(1, 1, dtype=torch.float64)
    W = torch.zeros(1, 4, 4, dtype=torch.float64)
    assert ritz_residual(W, e, zero, e, 0).tolist() == [0.0]
    W[0, 1, 0] = 2.0                                            # W e_0 = 2 e_1
    assert ritz_residual(W, e, zero, e, 0).tolist() == [math.inf]
    W[0, 1, 0] = 0.5                                            # a residual below 1 is not 0 either
    assert ritz_residual(W, e, zero, e, 0).tolist() == [math.inf]


def test_a_zero_ritz_value_has_a_zero_right_vector():
    """On a rank-1 W with k = 3, eigh's smallest eigenvalue of Z^T Z comes out <= 0: its Ritz value is
    exactly 0, and its v is exactly 0 (no division by a zero sigma), so it contributes nothing."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        W = torch.zeros(1, 8, 6, dtype=torch.float64)
        W[0, :, 0] = torch.randn(8, generator=g, dtype=torch.float64)
        V0 = torch.linalg.qr(torch.randn(1, 6, 3, generator=g, dtype=torch.float64)).Q
        U, S, V = warm_triplets(W, V0)
        assert S[0, 0].item() == pytest.approx(W.norm().item(), rel=1e-12)
        zero = S[0] == 0
        assert zero.any()
        assert torch.equal(V[0][:, zero], torch.zeros(6, int(zero.sum()), dtype=torch.float64))


def test_full_svd_takes_one_matrix_as_well_as_a_batch():
    """``(..., d1, d2)``: a single 2-D matrix (tall, wide, square) against numpy."""
    for shape in [(30, 12), (12, 30), (16, 16)]:
        W = decaying(1, *shape, seed=5)[0][0]
        U, S, Vh = full_svd(W)
        k = min(shape)
        assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
        np.testing.assert_allclose(S.numpy(), singular_values(W), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close((U * S) @ Vh, W, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30), (16, 16)])
def test_full_svd_takes_a_wide_matrix_by_its_transpose_and_the_others_directly(shape):
    """The route the module docstring names (the wide one is the faster): a wide W's factors are, bitwise,
    those of W^T's SVD transposed, a tall or square W's those of torch's own call (the two routes differ
    in rounding and in the signs of the vector pairs, so they are told apart)."""
    W, _ = decaying(3, *shape, seed=6)
    if shape[0] < shape[1]:
        Ut, St, Vht = torch.linalg.svd(W.mT, full_matrices=False)
        expected = (Vht.mT, St, Ut.mT)
    else:
        expected = torch.linalg.svd(W, full_matrices=False)
    for ours, ref in zip(full_svd(W), expected):
        assert torch.equal(ours, ref)


def test_one_iteration_by_default_is_rayleigh_ritz_on_the_span_of_W_V0():
    """Default iters = 1: with Q = orth(W V0), the Ritz values are the singular values of Q^T W and
    U diag(sigma) V^T = Q Q^T W (numpy, float64); a second iteration would give other values."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(2, 10, 8, generator=g, dtype=torch.float64)
    V0 = torch.linalg.qr(torch.randn(2, 8, 3, generator=g, dtype=torch.float64)).Q
    U, S, V = warm_triplets(W, V0)
    for i in range(2):
        Wn = W[i].numpy()
        Q = np.linalg.qr(Wn @ V0[i].numpy())[0]
        np.testing.assert_allclose(S[i].numpy(), np.linalg.svd(Q.T @ Wn, compute_uv=False), rtol=1e-12)
        np.testing.assert_allclose(((U[i] * S[i]) @ V[i].mT).numpy(), Q @ Q.T @ Wn, rtol=0, atol=1e-12)
    assert not torch.allclose(warm_triplets(W, V0, 2)[1], S, rtol=1e-6, atol=0)


def test_warm_triplets_and_ritz_residual_take_any_leading_batch_shape():
    """One matrix (2-D) and a (B, G) batch give, matrix by matrix, what the (G,) batch gives."""
    from q3r.decomposition import ritz_residual

    g = torch.Generator().manual_seed(8)
    W = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64)
    V0 = torch.linalg.qr(torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)).Q
    U, S, V = warm_triplets(W, V0)
    res = ritz_residual(W, U, S, V, 2)
    assert U.shape == (2, 3, 9, 4) and S.shape == (2, 3, 4) and V.shape == (2, 3, 7, 4) and res.shape == (2, 3)
    for b in range(2):
        Ub, Sb, Vb = warm_triplets(W[b], V0[b])
        torch.testing.assert_close(S[b], Sb, rtol=1e-12, atol=0)
        torch.testing.assert_close(res[b], ritz_residual(W[b], Ub, Sb, Vb, 2), rtol=1e-9, atol=0)
        for j in range(3):
            Uj, Sj, Vj = warm_triplets(W[b, j], V0[b, j])
            assert Sj.shape == (4,)
            torch.testing.assert_close(Sj, Sb[j], rtol=1e-12, atol=0)
            torch.testing.assert_close((Uj * Sj) @ Vj.mT, (Ub[j] * Sb[j]) @ Vb[j].mT, rtol=0, atol=1e-12)
            rj = ritz_residual(W[b, j], Uj, Sj, Vj, 2)
            assert rj.shape == () and rj.item() == pytest.approx(res[b, j].item(), rel=1e-9)


@pytest.mark.parametrize("iters", [2, 3])
def test_power_iterations_renormalize_so_a_tiny_or_huge_float32_matrix_keeps_its_triplets(iters):
    """Between iterations V is orthonormalized, so W W^T never forms: at a norm of 2^-80 (W W^T V would
    underflow in float32) or 2^70 (it would overflow) the Ritz values are those of W scaled."""
    g = torch.Generator().manual_seed(9)
    W = torch.randn(2, 12, 9, generator=g)
    V0 = torch.linalg.qr(torch.randn(2, 9, 4, generator=g)).Q
    U, S, V = warm_triplets(W, V0, iters)
    for c in (2.0 ** -80, 2.0 ** 70):
        Uc, Sc, Vc = warm_triplets(W * c, V0, iters)
        torch.testing.assert_close(Sc / c, S, rtol=1e-5, atol=0)
        product = (Uc * (Sc / c).unsqueeze(-2)) @ Vc.mT
        torch.testing.assert_close(product, (U * S.unsqueeze(-2)) @ V.mT, rtol=0, atol=1e-4)

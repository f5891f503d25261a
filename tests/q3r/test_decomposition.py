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

"""Pure tensor functions of Q3R (paper Section 4, Appendices B-C).

Notation follows the paper. An operator at expansion point W' is given by the leading
singular triplets (U, sigma, V) of W' and the smoothing parameter eps, stored as
s_i = eps / max(sigma_i, eps) - 1, so -1 < s_i <= 0 and s_i = 0 for sigma_i <= eps.
Columns with s_i = 0 contribute nothing, so an operator may carry extra (padding)
columns: that is how same-shape operators of different r_env are batched.

Every function broadcasts over leading batch dimensions: Z (..., d1, d2),
U (..., d1, k), V (..., d2, k), s (..., k).
"""
from __future__ import annotations

import torch
from torch import Tensor


def shift(sigma: Tensor, eps: Tensor) -> Tensor:
    """s_i = eps / sigma_i - 1 where sigma_i > eps, else 0 (Algorithm 3, line 1).

    eps has the batch shape (...,) and broadcasts over the k columns of sigma (..., k).
    """
    eps = eps.unsqueeze(-1)
    above = sigma > eps
    return torch.where(above, eps / torch.where(above, sigma, 1.0) - 1.0, 0.0)


def reweight_factors(Z: Tensor, U: Tensor, V: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """X (..., d1, 2k), Y (..., 2k, d2) with R(Z) = Z + X @ Y (Appendix C, regrouped).

    R(Z) = (I + U S U^T) Z (I + V S V^T) = Z + U S (A + C S V^T) + B S V^T with A = U^T Z,
    B = Z V, C = A V; stacking [U S, B S] against [A + C S V^T; V^T] makes the two
    rank-k products one matmul of inner size 2k. Cost O(k d1 d2).
    """
    sr = s.unsqueeze(-2)                           # (..., 1, k)
    A = U.mT @ Z                                   # (..., k, d2)
    B = Z @ V                                      # (..., d1, k)
    C = A @ V                                      # (..., k, k)
    X = torch.cat([U * sr, B * sr], dim=-1)        # (..., d1, 2k)
    Y = torch.cat([A + (C * sr) @ V.mT, V.mT], dim=-2)  # (..., 2k, d2)
    return X, Y


def reweight(Z: Tensor, U: Tensor, V: Tensor, s: Tensor) -> Tensor:
    """R_{W',eps}(Z) = (I + U S U^T) Z (I + V S V^T), the O(k d1 d2) form of Appendix C.

    Expanded, this is Z + U S (U^T Z + (U^T Z V) S V^T) + (Z V) S V^T.
    """
    X, Y = reweight_factors(Z, U, V, s)
    if Z.ndim == 3:
        return torch.baddbmm(Z, X, Y)              # one rounding of Z + X Y (matters in bf16)
    if Z.ndim == 2:
        return torch.addmm(Z, X, Y)
    return Z + X @ Y


def q3r_value(Z: Tensor, U: Tensor, V: Tensor, s: Tensor) -> Tensor:
    """Q3R(Z) = 1/2 <Z, R(Z)> (eq. 6, Algorithm 3), differentiable in Z; shape (...,).

    With A = U^T Z, B = Z V, C = U^T Z V:
    2 Q3R = ||Z||_F^2 + sum_ij s_i C_ij^2 s_j + sum_ij B_ij^2 s_j + sum_ij s_i A_ij^2.
    """
    A = U.mT @ Z                                   # (..., k, d2)
    B = Z @ V                                      # (..., d1, k)
    C = A @ V                                      # (..., k, k)
    t1 = Z.square().sum((-2, -1))
    t2 = (s.unsqueeze(-1) * C.square() * s.unsqueeze(-2)).sum((-2, -1))
    t3 = (B.square() * s.unsqueeze(-2)).sum((-2, -1))
    t4 = (s.unsqueeze(-1) * A.square()).sum((-2, -1))
    return 0.5 * (t1 + t2 + t3 + t4)


def effective_rank(sigma: Tensor) -> Tensor:
    """exp of the entropy of p_i = sigma_i / sum(sigma) (Roy & Vetterli); shape (...,)."""
    p = sigma / sigma.sum(-1, keepdim=True).clamp_min(torch.finfo(sigma.dtype).tiny)
    return torch.exp(-(p * torch.log(p.clamp_min(torch.finfo(sigma.dtype).tiny))).sum(-1))


def tail_ratio(sigma: Tensor, rank: int) -> Tensor:
    """Energy of the top `rank` singular values over the total energy; shape (...,)."""
    energy = sigma.square()
    return energy[..., :rank].sum(-1) / energy.sum(-1).clamp_min(torch.finfo(sigma.dtype).tiny)

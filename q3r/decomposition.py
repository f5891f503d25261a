"""Warm-started singular triplets for Algorithm 1 (the exact path is a full SVD in bank.py).

It works on a batch of same-shape matrices W (G, d1, d2) and returns the leading k
triplets U (G, d1, k), sigma (G, k), V (G, d2, k), sigma sorted descending.
"""
from __future__ import annotations

import torch
from torch import Tensor


def warm_triplets(W: Tensor, V0: Tensor, iters: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Leading triplets by subspace iteration started from the previous right subspace V0.

    Each iteration is Q = orth(W V), Z = W^T Q, so span(Z) = span(W^T W V); a Rayleigh-Ritz
    step then diagonalises the small Gram matrix Z^T Z (in float64, so small singular
    values keep their accuracy): Z^T Z = E diag(sigma^2) E^T gives U = Q E, V = Z E / sigma.
    Between two reweightings W moves little, so one iteration from the previous subspace
    tracks the leading triplets closely (see tests for the tolerance), at O(k d1 d2) cost
    instead of a full SVD; iterations accumulate across reweightings.
    """
    V = V0
    for i in range(iters):
        Q = torch.linalg.qr(W @ V).Q                    # (G, d1, k)
        Z = W.mT @ Q                                    # (G, d2, k)
        V = Z if i + 1 == iters else torch.linalg.qr(Z).Q
    Z64 = Z.double()
    lam, E = torch.linalg.eigh(Z64.mT @ Z64)            # ascending, (G, k), (G, k, k)
    lam, E = lam.flip(-1), E.flip(-1)
    sigma = lam.clamp_min(0).sqrt()                     # (G, k), descending
    inv = torch.where(sigma > 0, 1.0 / sigma.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    E = E.to(W.dtype)
    V = (Z @ E) * inv.to(W.dtype).unsqueeze(-2)         # (G, d2, k)
    return Q @ E, sigma.to(W.dtype), V                  # U (G, d1, k)

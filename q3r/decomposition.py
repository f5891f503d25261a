"""Singular triplets for Algorithm 1: exact (full SVD) or warm-started (subspace iteration).

Both work on a batch of same-shape matrices W (G, d1, d2) and return the leading `width`
triplets U (G, d1, width), sigma (G, width), V (G, d2, width), sigma sorted descending.
"""
from __future__ import annotations

import torch
from torch import Tensor


def exact_triplets(W: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Leading `width` triplets from a full (thin) SVD of every matrix in the batch."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[..., :width], S[..., :width], Vh[..., :width, :].mT


def warm_triplets(W: Tensor, V0: Tensor, iters: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Leading triplets by subspace iteration started from the previous right subspace V0.

    Each iteration is V <- orth(W^T orth(W V)); a Rayleigh-Ritz step (thin SVD of the
    d1 x k matrix W V) then rotates the subspace onto singular vectors. Between two
    reweightings W moves little, so one iteration from the previous subspace tracks the
    leading triplets closely (see tests for the tolerance), at O(k d1 d2) cost instead of
    a full SVD. Iterations accumulate across reweightings, so a stationary W converges.
    """
    V = V0
    for _ in range(iters):
        Q = torch.linalg.qr(W @ V).Q                    # (G, d1, k)
        V = torch.linalg.qr(W.mT @ Q).Q                 # (G, d2, k)
    Ub, S, Vbh = torch.linalg.svd(W @ V, full_matrices=False)  # (G, d1, k), (G, k), (G, k, k)
    return Ub, S, V @ Vbh.mT

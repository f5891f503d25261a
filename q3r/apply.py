"""The per-step Q3R descent W <- W - scale R(W) of one shape group, with buffers kept between steps.

R(W) = W + X Y with X = [U S, B S], Y = [A + C S V^T; V^T], A = U^T W, B = W V, C = A V
(``functional.reweight_factors``). U S and V^T change only when the operators are refitted,
so they are written once into the left half of X and the lower half of Y, and each step
writes only B S and A + C S V^T into the other halves, in place: no concatenation, no new
(G, d1, 2k) and (G, 2k, d2) tensors, and the sum A + C S V^T fused into one batched matmul.
Same products as ``reweight_factors``, so the same result up to float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class StepBuffers:
    """X (G, d1, 2k) and Y (G, 2k, d2) of one group, their fixed halves filled at each refit."""

    def __init__(self):
        self._key: Optional[int] = None
        self._X: Optional[Tensor] = None
        self._Y: Optional[Tensor] = None

    def descend(self, W: Tensor, U: Tensor, V: Tensor, s: Tensor, scale: float, key: int) -> None:
        """W <- (1 - scale) W - scale X Y = W - scale R(W), in place. U (G, d1, k), V (G, d2, k) and
        s (G, k) are the group's factors cut to k columns; ``key`` names the operators (the bank's
        count of their assignments): when it changes, or W's dtype or device does, the fixed
        halves are written again."""
        k = U.shape[-1]
        sr = s.unsqueeze(-2)                                  # (G, 1, k)
        X = self._X
        if key != self._key or X is None or X.dtype != W.dtype or X.device != W.device:
            G, d1, d2 = W.shape
            self._X = W.new_empty(G, d1, 2 * k)
            self._Y = W.new_empty(G, 2 * k, d2)
            torch.mul(U, sr, out=self._X[..., :k])            # U S
            self._Y[:, k:].copy_(V.mT)                        # V^T
            self._key = key
        X, Y = self._X, self._Y
        A = U.mT @ W                                          # (G, k, d2)
        C = A @ V                                             # (G, k, k)
        torch.baddbmm(A, C * sr, V.mT, out=Y[:, :k])          # A + C S V^T
        B = X[..., k:]
        torch.bmm(W, V, out=B)                                # W V
        B.mul_(sr)                                            # B S
        W.baddbmm_(X, Y, beta=1.0 - scale, alpha=-scale)


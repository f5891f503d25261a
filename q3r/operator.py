"""The reweighting operator of one matrix (Definition 4.1) and Algorithm 1, exact."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .functional import q3r_value, reweight, shift
from .ranks import resolve_rank
from .schedules import EpsSchedule, make_schedule, next_eps


class ReweightingOperator:
    """R_{W',eps} given by the r_env leading singular triplets of W' with sigma_i > eps.

    ``op(Z)`` is R_{W',eps}(Z) at O(r_env d1 d2) cost; ``op.value(Z)`` is the Q3R value
    1/2 <Z, R(Z)>, differentiable in Z, whose gradient is ``op(Z)``.
    """

    def __init__(self, U: Tensor, sigma: Tensor, V: Tensor, eps: float):
        if U.shape[-1] != sigma.shape[-1] or V.shape[-1] != sigma.shape[-1]:
            raise ValueError(f"U, sigma, V disagree on the rank: {U.shape=}, {sigma.shape=}, {V.shape=}")
        self.U, self.sigma, self.V, self.eps = U, sigma, V, float(eps)
        self.s = shift(sigma, sigma.new_tensor(self.eps))

    @property
    def rank(self) -> int:
        """r_env: the number of singular values of W' above eps."""
        return int((self.s < 0).sum())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.V.shape[0])

    @classmethod
    def fit(
        cls,
        W: Tensor,
        target_rank: float | int,
        eps: Optional[float] = None,
        schedule: str | dict | EpsSchedule = "paper",
        eps_first: Optional[float] = None,
    ) -> "ReweightingOperator":
        """Algorithm 1 on W with a full SVD: eps <- schedule(eps, sigma_{r+1}(W)), keep sigma_i > eps.

        ``target_rank`` is a fraction in (0, 1] or an absolute rank (int); ``eps=None``
        means +infinity (the first fit), so the paper's rule sets eps = sigma_{r+1}(W).
        ``eps_first`` (the eps of the first fit) serves the "linear" schedule; None means +infinity.
        """
        if W.ndim != 2:
            raise ValueError(f"fit takes one matrix, but got W.shape={tuple(W.shape)}")
        r = resolve_rank(W.shape, target_rank)
        W = W.detach()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        eps_old = W.new_tensor(math.inf if eps is None else float(eps))
        first = W.new_tensor(math.inf if eps_first is None else float(eps_first))
        eps_new = next_eps(make_schedule(schedule), eps_old, S[r], first)
        r_env = int((S > eps_new).sum())
        return cls(U[:, :r_env], S[:r_env], Vh[:r_env].mT, float(eps_new))

    def __call__(self, Z: Tensor) -> Tensor:
        return reweight(Z, self.U, self.V, self.s)

    def value(self, Z: Tensor) -> Tensor:
        return q3r_value(Z, self.U, self.V, self.s)

    def __repr__(self) -> str:
        return f"ReweightingOperator(shape={self.shape}, rank={self.rank}, eps={self.eps:.4g})"

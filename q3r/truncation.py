"""Post-training truncation: each regularized matrix cut to its best rank-r(p) approximation.

``SpectralCache`` takes ONE batched SVD per target and serves every retention level from it:
``applied(p)`` swaps truncated weights into the model in place (the fast path for scoring),
``truncated_model(p)`` returns a truncated deep copy, ``factorized_model(p)`` replaces the
truncated Linears by factor pairs so the saving is real. Retention 1.0 keeps every matrix
as it is; biases are always kept.

What is stored, and counted (``parameter_counts``), is what a user would keep: a d1 x d2 matrix of
numerical rank k truncated at retention p keeps k' = min(k, r(p)) factor columns (r(1) = min(d1, d2)),
k' (d1 + d2) numbers, or d1 d2 as a dense matrix when that is not more. A LoRA matrix (rank r(p0)
by construction) therefore counts r(p0) (d1 + d2) at every p >= p0, dense-trained matrices count
r(p) (d1 + d2) at p < 1 and d1 d2 at p = 1. The numerical rank uses the tolerance of
``torch.linalg.matrix_rank``: sigma_i > sigma_1 * max(d1, d2) * machine epsilon of the dtype.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .ranks import target_rank
from .targets import Target, as_targets


def retained_rank(shape: Sequence[int], retention: float) -> Optional[int]:
    """r(p) for truncation, or None at p = 1.0 (the matrix is kept whole)."""
    if float(retention) >= 1.0 and not isinstance(retention, bool):
        return None
    return target_rank(shape, retention)


def numerical_rank(S: Tensor, shape: Sequence[int]) -> int:
    """#{sigma_i > sigma_1 * max(d1, d2) * eps(dtype)}: the rank ``torch.linalg.matrix_rank`` reports."""
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    tol = float(S[0]) * max(shape) * torch.finfo(S.dtype).eps
    return int((S > tol).sum())


def kept_columns(shape: Sequence[int], rank: int, retention: float) -> Optional[int]:
    """k' = min(rank, r(p)) factor columns kept at retention p, or None when the dense matrix is not
    larger than k' (d1 + d2) numbers (then it is stored dense)."""
    d1, d2 = shape
    r = retained_rank(shape, retention)
    k = min(rank, min(d1, d2) if r is None else r)
    return None if k * (d1 + d2) >= d1 * d2 else k


def stored_numbers(shape: Sequence[int], rank: int, retention: float) -> int:
    """What a matrix of this rank stores after truncation at p: k' (d1 + d2), or d1 d2 dense."""
    k = kept_columns(shape, rank, retention)
    return shape[0] * shape[1] if k is None else k * (shape[0] + shape[1])


class SpectralCache:
    """The SVD of every target's current weight, computed once and batched by shape."""

    def __init__(self, targets: Iterable[Target]):
        self.targets = as_targets(targets)
        self.U: dict[str, Tensor] = {}
        self.S: dict[str, Tensor] = {}
        self.Vh: dict[str, Tensor] = {}
        self.original: dict[str, Tensor] = {}
        self.rank: dict[str, int] = {}          # numerical rank of each target's weight
        groups: dict[tuple, list[Target]] = {}
        for t in self.targets:
            groups.setdefault((t.shape, t.param.dtype, t.param.device), []).append(t)
        with torch.no_grad():
            for ts in groups.values():
                W = torch.stack([self._matrix(t) for t in ts])
                U, S, Vh = torch.linalg.svd(W.float() if W.dtype in (torch.float16, torch.bfloat16) else W,
                                            full_matrices=False)
                for i, t in enumerate(ts):
                    self.U[t.name], self.S[t.name], self.Vh[t.name] = U[i], S[i], Vh[i]
                    self.original[t.name] = t.weight.detach().clone()
                    self.rank[t.name] = numerical_rank(S[i], t.shape)

    def _matrix(self, t: Target) -> Tensor:
        """The matrix of target t that the cache decomposes: its weight (``DeltaSpectra``: its update)."""
        return t.weight.detach()

    def singular_values(self, name: str) -> Tensor:
        return self.S[name]

    def factors(self, name: str, retention: float) -> Optional[tuple[Tensor, Tensor]]:
        """What is stored at retention p: (A, B) with A (d1, k') = U diag(sigma) and B (k', d2) = V^T for
        k' = min(rank, r(p)) columns, or None when the dense matrix is not larger (see the module docstring)."""
        W = self.original[name]
        k = kept_columns(W.shape, self.rank[name], retention)
        if k is None:
            return None
        return self.U[name][:, :k] * self.S[name][:k], self.Vh[name][:k]

    def kept_rank(self, name: str, retention: float) -> Optional[int]:
        """The rank ``low_rank`` cuts the target to at retention p, or None where it keeps the matrix whole."""
        r = retained_rank(self.original[name].shape, retention)
        return None if r is None else min(r, self.rank[name])    # the columns beyond the numerical rank are zero

    def level_ranks(self, retention: float) -> tuple:
        """``kept_rank`` of every target: two levels with the same ranks truncate to the same weights (a LoRA
        matrix of rank r(p0) at every p >= p0)."""
        return tuple(self.kept_rank(t.name, retention) for t in self.targets)

    def low_rank(self, name: str, retention: float) -> Tensor:
        """The best rank-r(p) approximation of the target's weight (its original at p = 1)."""
        W = self.original[name]
        k = self.kept_rank(name, retention)
        if k is None:
            return W.clone()
        return ((self.U[name][:, :k] * self.S[name][:k]) @ self.Vh[name][:k]).to(W.dtype)

    def counts(self, model: nn.Module, retention: float) -> dict:
        """``parameter_counts`` at retention p, with the ranks of this cache."""
        return _counts(model, [(t, self.rank[t.name]) for t in self.targets], retention)

    @contextmanager
    def applied(self, retention: float, targets: Optional[Sequence[Target]] = None) -> Iterator[None]:
        """Truncate the targets' weights in place for the duration of the block, then restore.

        ``targets`` lets the cache act on the same matrices of another model instance.
        """
        targets = self.targets if targets is None else targets
        try:
            with torch.no_grad():
                for t in targets:
                    t.weight.copy_(self.low_rank(t.name, retention))
            yield
        finally:
            with torch.no_grad():
                for t in targets:
                    t.weight.copy_(self.original[t.name])

    def truncated_model(self, model: nn.Module, retention: float) -> nn.Module:
        """A deep copy of ``model`` whose targets are truncated (the original is untouched)."""
        named = [t.named_in(model) for t in self.targets]
        clone = copy.deepcopy(model)
        with torch.no_grad():
            for t in named:
                t.rebind(clone).weight.copy_(self.low_rank(t.name, retention))
        return clone

    def factorized_model(self, model: nn.Module, retention: float) -> nn.Module:
        """A deep copy in which every truncated Linear becomes a ``LowRankLinear``."""
        named = [t.named_in(model) for t in self.targets]
        clone = copy.deepcopy(model)
        by_module: dict[str, list[Target]] = {}
        for t in named:
            if t.param_name is None or not t.param_name.endswith("weight"):
                raise ValueError(f"target {t.name!r} is not the weight of a named Linear; cannot factorize it")
            by_module.setdefault(t.param_name[: -len(".weight")], []).append(t)
        for module_name, ts in by_module.items():
            linear = clone.get_submodule(module_name)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{module_name!r} is a {type(linear).__name__}, not an nn.Linear")
            segments = [(t.row_start, t.row_end, self.factors(t.name, retention)) for t in ts]
            if not module_name:                                    # the model is itself one Linear
                return LowRankLinear.from_linear(linear, segments)
            parent_name, _, leaf = module_name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, leaf, LowRankLinear.from_linear(linear, segments))
        return clone


class LowRankLinear(nn.Module):
    """A Linear whose weight rows are split into segments, each dense or a factor pair A @ B.

    A segment factorized at rank r computes (x B^T) A^T with r (d_in + d_out_seg) numbers.
    """

    def __init__(self, in_features: int, out_features: int, bias: Optional[Tensor]):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dense = nn.ParameterDict()
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.order: list[str] = []
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, segments) -> "LowRankLinear":
        """Segments: (row_start, row_end, (A, B) or None); rows not named stay dense."""
        out = cls(linear.in_features, linear.out_features, linear.bias)
        W = linear.weight.detach()
        cuts, row = [], 0
        for start, end, f in sorted(segments, key=lambda s: s[0]):
            if start > row:
                cuts.append((row, start, None))
            cuts.append((start, end, f))
            row = end
        if row < W.shape[0]:
            cuts.append((row, W.shape[0], None))
        for i, (start, end, f) in enumerate(cuts):
            key = str(i)
            if f is None:
                out.dense[key] = nn.Parameter(W[start:end].clone())
            else:
                out.A[key] = nn.Parameter(f[0].detach().to(W.dtype).clone())   # (d_out_seg, r)
                out.B[key] = nn.Parameter(f[1].detach().to(W.dtype).clone())   # (r, d_in)
            out.order.append(key)
        return out

    def merged_weight(self) -> Tensor:
        """The (d_out, d_in) weight these segments compute."""
        return torch.cat([self.dense[k] if k in self.dense else self.A[k] @ self.B[k] for k in self.order])

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the merged weight (and the bias)."""
        W = self.merged_weight().detach()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            out.weight.copy_(W)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        parts = [x @ self.dense[k].mT if k in self.dense else (x @ self.B[k].mT) @ self.A[k].mT for k in self.order]
        y = torch.cat(parts, dim=-1)                         # (..., d_out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        ranks = [self.A[k].shape[1] if k in self.A else "dense" for k in self.order]
        return f"in_features={self.in_features}, out_features={self.out_features}, segment_ranks={ranks}"


def truncate(model: nn.Module, targets: Iterable[Target], retention: float) -> nn.Module:
    """A truncated deep copy of ``model`` at retention p (one SVD per target).

    For several retention levels build one ``SpectralCache`` and call it per level.
    """
    return SpectralCache(targets).truncated_model(model, retention)


def parameter_counts(model: nn.Module, targets: Iterable[Target], retention: float,
                     cache: Optional[SpectralCache] = None) -> dict:
    """Parameters after factorizing the targets at retention p, per target and in total: what
    ``factorized_model`` stores (see the module docstring); ranks from ``cache`` when given.

    Returns {"targets": {name: (dense, kept)}, "targeted_dense", "targeted_kept",
    "model_dense", "model_kept"}.
    """
    targets = as_targets(targets)
    if cache is not None:
        ranks = [cache.rank[t.name] for t in targets]
    else:
        with torch.no_grad():
            ranks = [numerical_rank(torch.linalg.svdvals(t.weight.detach().float()
                                                         if t.weight.dtype in (torch.float16, torch.bfloat16)
                                                         else t.weight.detach()), t.shape) for t in targets]
    return _counts(model, list(zip(targets, ranks)), retention)


def _counts(model: nn.Module, ranked: list[tuple[Target, int]], retention: float) -> dict:
    per = {t.name: (t.numel, stored_numbers(t.shape, k, retention)) for t, k in ranked}
    model_dense = sum(p.numel() for p in model.parameters())
    dense = sum(d for d, _ in per.values())
    kept = sum(k for _, k in per.values())
    return {"targets": per, "targeted_dense": dense, "targeted_kept": kept,
            "model_dense": model_dense, "model_kept": model_dense - dense + kept}

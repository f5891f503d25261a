"""Post-training truncation: each regularized matrix cut to its best rank-r(p) approximation.

``SpectralCache`` takes ONE batched SVD per target and serves every retention level from it:
``applied(p)`` swaps truncated weights into the model in place (the fast path for scoring),
``truncated_model(p)`` returns a truncated deep copy, ``factorized_model(p)`` replaces the
truncated Linears by factor pairs so the saving is real. Retention 1.0 keeps every matrix
as it is; biases are always kept.
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


class SpectralCache:
    """The SVD of every target's current weight, computed once and batched by shape."""

    def __init__(self, targets: Iterable[Target]):
        self.targets = as_targets(targets)
        self.U: dict[str, Tensor] = {}
        self.S: dict[str, Tensor] = {}
        self.Vh: dict[str, Tensor] = {}
        self.original: dict[str, Tensor] = {}
        groups: dict[tuple, list[Target]] = {}
        for t in self.targets:
            groups.setdefault((t.shape, t.param.dtype, t.param.device), []).append(t)
        with torch.no_grad():
            for ts in groups.values():
                W = torch.stack([t.weight.detach() for t in ts])
                U, S, Vh = torch.linalg.svd(W.float() if W.dtype in (torch.float16, torch.bfloat16) else W,
                                            full_matrices=False)
                for i, t in enumerate(ts):
                    self.U[t.name], self.S[t.name], self.Vh[t.name] = U[i], S[i], Vh[i]
                    self.original[t.name] = t.weight.detach().clone()

    def singular_values(self, name: str) -> Tensor:
        return self.S[name]

    def factors(self, name: str, retention: float) -> Optional[tuple[Tensor, Tensor]]:
        """(A, B) with A (d1, r) = U_r diag(sigma_r) and B (r, d2) = V_r^T, or None at p = 1."""
        r = retained_rank(self.original[name].shape, retention)
        if r is None:
            return None
        return self.U[name][:, :r] * self.S[name][:r], self.Vh[name][:r]

    def low_rank(self, name: str, retention: float) -> Tensor:
        """The best rank-r(p) approximation of the target's weight (its original at p = 1)."""
        f = self.factors(name, retention)
        W = self.original[name]
        return W.clone() if f is None else (f[0] @ f[1]).to(W.dtype)

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
        clone = copy.deepcopy(model)
        with torch.no_grad():
            for t in self.targets:
                t.rebind(clone).weight.copy_(self.low_rank(t.name, retention))
        return clone

    def factorized_model(self, model: nn.Module, retention: float) -> nn.Module:
        """A deep copy in which every truncated Linear becomes a ``LowRankLinear``."""
        clone = copy.deepcopy(model)
        by_module: dict[str, list[Target]] = {}
        for t in self.targets:
            if t.param_name is None or not t.param_name.endswith("weight"):
                raise ValueError(f"target {t.name!r} is not the weight of a named Linear; cannot factorize it")
            by_module.setdefault(t.param_name[: -len(".weight")], []).append(t)
        for module_name, ts in by_module.items():
            linear = clone.get_submodule(module_name)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{module_name!r} is a {type(linear).__name__}, not an nn.Linear")
            segments = [(t.row_start, t.row_end, self.factors(t.name, retention)) for t in ts]
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


def parameter_counts(model: nn.Module, targets: Iterable[Target], retention: float) -> dict:
    """Parameters after factorizing the targets at retention p, per target and in total.

    Returns {"targets": {name: (dense, kept)}, "targeted_dense", "targeted_kept",
    "model_dense", "model_kept"}; a matrix kept whole (p = 1) counts d1 * d2.
    """
    per = {}
    for t in as_targets(targets):
        r = retained_rank(t.shape, retention)
        per[t.name] = (t.numel, t.numel if r is None else r * sum(t.shape))
    model_dense = sum(p.numel() for p in model.parameters())
    dense = sum(d for d, _ in per.values())
    kept = sum(k for _, k in per.values())
    return {"targets": per, "targeted_dense": dense, "targeted_kept": kept,
            "model_dense": model_dense, "model_kept": model_dense - dense + kept}

"""Truncating a fine-tuning update: W = W0 + Delta W scored with Delta W cut to rank r.

Fine-tuning with a low-rank update (paper Section 5.2) keeps the pretrained W0 and stores the
update Delta W = W - W0 as factors; so it is Delta W, not W, that is truncated: W0 + [Delta W]_r,
with [.]_r the best rank-r approximation. ``DeltaSpectra`` takes one SVD of every target's Delta W
and serves every level from it, like ``SpectralCache`` does for W: a level is a retention fraction
p (rank r(p), the same formula as training and weight truncation; p = 1.0 keeps Delta W whole) or
an int rank r (the same r for every matrix, as fine-tuning ranks are usually given).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .targets import Target, as_targets
from .truncation import _counts, numerical_rank, retained_rank

Level = Union[float, int]


def level_rank(shape, level: Level) -> Optional[int]:
    """The rank a level keeps: r(p) for a fraction p < 1, min(r, min(d1, d2)) for an int r, None at p = 1.0."""
    if isinstance(level, bool):
        raise ValueError(f"a truncation level is a fraction in (0, 1] or an int rank >= 1, but got {level=}")
    if isinstance(level, int):
        if level < 1:
            raise ValueError(f"an int truncation rank must be >= 1, but got {level=}")
        return min(level, min(shape))
    return retained_rank(shape, level)


def top_energy(sigma: Tensor, rank: int) -> float:
    """sum_{i <= r} sigma_i^2 / sum_i sigma_i^2: the share of ||Delta W||_F^2 a rank-r cut keeps (1 for zero)."""
    total = float((sigma.double() ** 2).sum())
    return 1.0 if total == 0.0 else float((sigma[:rank].double() ** 2).sum()) / total


class DeltaSpectra:
    """The SVD of every target's update Delta W = W - W0, computed once.

    Args:
        targets: the matrices (``select_targets`` of the fine-tuned, merged model).
        base: {target name: W0}, the pretrained matrices (same shapes).
    """

    def __init__(self, targets: Iterable[Target], base: Mapping[str, Tensor]):
        self.targets = as_targets(targets)
        missing = [t.name for t in self.targets if t.name not in base]
        if missing:
            raise KeyError(f"no pretrained weight W0 for targets {missing[:5]}")
        self.base, self.original = {}, {}
        self.U: dict[str, Tensor] = {}
        self.S: dict[str, Tensor] = {}
        self.Vh: dict[str, Tensor] = {}
        self.rank: dict[str, int] = {}          # numerical rank of each Delta W
        with torch.no_grad():
            for t in self.targets:
                W = t.weight.detach()
                W0 = base[t.name].to(W.device, W.dtype)
                if W0.shape != W.shape:
                    raise ValueError(f"target {t.name!r}: W0 has shape {tuple(W0.shape)}, W {tuple(W.shape)}")
                D = (W - W0).float() if W.dtype in (torch.float16, torch.bfloat16) else W - W0   # (d1, d2)
                self.U[t.name], self.S[t.name], self.Vh[t.name] = torch.linalg.svd(D, full_matrices=False)
                self.base[t.name], self.original[t.name] = W0.clone(), W.clone()
                self.rank[t.name] = numerical_rank(self.S[t.name], t.shape)

    def singular_values(self, name: str) -> Tensor:
        """The singular values of the target's Delta W (diagnostics read them as a spectrum)."""
        return self.S[name]

    def energy(self, name: str, rank: int) -> float:
        """The share of ||Delta W||_F^2 in its top ``rank`` singular values."""
        return top_energy(self.S[name], rank)

    def low_rank(self, name: str, level: Level) -> Tensor:
        """W0 + [Delta W]_r at this level (W itself when the level keeps Delta W whole)."""
        W = self.original[name]
        r = level_rank(W.shape, level)
        if r is None or r >= min(W.shape):
            return W.clone()
        k = min(r, self.rank[name])
        D = (self.U[name][:, :k] * self.S[name][:k]) @ self.Vh[name][:k]
        return (self.base[name] + D.to(W.dtype)).to(W.dtype)

    @contextmanager
    def applied(self, level: Level) -> Iterator[None]:
        """Every target set to W0 + [Delta W]_r for the duration of the block, then restored."""
        try:
            with torch.no_grad():
                for t in self.targets:
                    t.weight.copy_(self.low_rank(t.name, level))
            yield
        finally:
            with torch.no_grad():
                for t in self.targets:
                    t.weight.copy_(self.original[t.name])

    def counts(self, model: nn.Module, retention: float) -> dict:
        """``parameter_counts`` with each targeted matrix stored as its update's factors at retention p
        (W0 is the pretrained checkpoint's, not counted): k'(d1 + d2) numbers, or d1 d2 when not fewer."""
        return _counts(model, [(t, self.rank[t.name]) for t in self.targets], retention)

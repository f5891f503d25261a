"""Truncating a fine-tuning update: W = W0 + Delta W scored with Delta W cut to rank r.

Fine-tuning with a low-rank update (paper Section 5.2) keeps the pretrained W0 and stores the
update Delta W = W - W0 as factors; so it is Delta W, not W, that is truncated: W0 + [Delta W]_r,
with [.]_r the best rank-r approximation. ``DeltaSpectra`` takes one SVD of every target's Delta W
and serves every level from it, like ``SpectralCache`` does for W: a level is a retention fraction
p (rank r(p), the same formula as training and weight truncation; p = 1.0 keeps Delta W whole) or
an int rank r (the same r for every matrix, as fine-tuning ranks are usually given).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

from torch import Tensor, nn

from .functional import tail_ratio
from .targets import Target, as_targets
from .truncation import SpectralCache, retained_rank

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
    sigma = sigma.double()
    return 1.0 if float(sigma.square().sum()) == 0.0 else float(tail_ratio(sigma, rank))


class DeltaSpectra(SpectralCache):
    """The SVD of every target's update Delta W = W - W0, computed once and batched by shape.

    A ``SpectralCache`` of the updates: the same singular values, ranks, parameter counts and
    ``applied`` block, but a level sets a target to W0 + [Delta W]_r, and the factors stored are
    Delta W's (W0 is the pretrained checkpoint's, not counted).

    Args:
        targets: the matrices (``select_targets`` of the fine-tuned, merged model).
        base: {target name: W0}, the pretrained matrices (same shapes; held, not copied).
    """

    def __init__(self, targets: Iterable[Target], base: Mapping[str, Tensor]):
        targets = as_targets(targets)
        missing = [t.name for t in targets if t.name not in base]
        if missing:
            raise KeyError(f"no pretrained weight W0 for targets {missing[:5]}")
        self.base: dict[str, Tensor] = {}
        for t in targets:
            W = t.weight
            W0 = base[t.name].to(W.device, W.dtype)
            if W0.shape != W.shape:
                raise ValueError(f"target {t.name!r}: W0 has shape {tuple(W0.shape)}, W {tuple(W.shape)}")
            self.base[t.name] = W0
        super().__init__(targets)

    def _matrix(self, t: Target) -> Tensor:
        return t.weight.detach() - self.base[t.name]

    def energy(self, name: str, rank: int) -> float:
        """The share of ||Delta W||_F^2 in its top ``rank`` singular values."""
        return top_energy(self.S[name], rank)

    def kept_rank(self, name: str, level: Level) -> Optional[int]:
        """The rank Delta W is cut to at this level, or None where the level keeps it whole."""
        W = self.original[name]
        r = level_rank(W.shape, level)
        return None if r is None or r >= min(W.shape) else min(r, self.rank[name])

    def low_rank(self, name: str, level: Level) -> Tensor:
        """W0 + [Delta W]_r at this level (W itself when the level keeps Delta W whole)."""
        W = self.original[name]
        k = self.kept_rank(name, level)
        if k is None:
            return W.clone()
        D = (self.U[name][:, :k] * self.S[name][:k]) @ self.Vh[name][:k]
        return self.base[name] + D.to(W.dtype)

    def truncated_model(self, model: nn.Module, retention: float) -> nn.Module:
        raise NotImplementedError("DeltaSpectra truncates an update in place (applied); it builds no model")

    factorized_model = truncated_model

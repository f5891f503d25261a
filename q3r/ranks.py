"""The one target-rank formula, shared by training and truncation (paper E.1.1)."""
from __future__ import annotations

import math
from typing import Sequence


def target_rank(shape: Sequence[int], fraction: float) -> int:
    """Rank r(p) whose factors hold at most a fraction p of a d1 x d2 matrix's numbers.

    r(p) = floor(p * d1 * d2 / (d1 + d2)), clamped to [1, min(d1, d2) - 1]. A 192 x 192
    matrix at p = 0.2 gives 19, as the paper states for ViT-Tiny.
    """
    d1, d2 = (int(d) for d in shape[-2:])
    if isinstance(fraction, bool) or not (0.0 < float(fraction) <= 1.0):
        raise ValueError(f"retention fraction must lie in (0, 1], but got fraction={fraction!r}")
    if min(d1, d2) < 2:
        raise ValueError(f"a rank-regularized matrix needs both sides >= 2, but got shape={(d1, d2)}")
    r = math.floor(float(fraction) * d1 * d2 / (d1 + d2))
    return max(1, min(r, min(d1, d2) - 1))


def resolve_rank(shape: Sequence[int], rank: float | int) -> int:
    """A target rank given as a fraction in (0, 1] (float) or as an absolute rank (int >= 1)."""
    d1, d2 = (int(d) for d in shape[-2:])
    if isinstance(rank, bool):
        raise ValueError(f"target rank must be a fraction in (0, 1] or an int >= 1, but got rank={rank!r}")
    if isinstance(rank, int):
        if not 1 <= rank < min(d1, d2):
            raise ValueError(
                f"an absolute target rank must lie in [1, min(d1, d2) - 1] = [1, {min(d1, d2) - 1}] "
                f"for shape {(d1, d2)}, but got rank={rank}"
            )
        return rank
    return target_rank((d1, d2), rank)

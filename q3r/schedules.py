"""Smoothing-parameter (epsilon) schedules for Algorithm 1, chosen by name.

A schedule maps (eps_old, sigma_next) to eps_new, elementwise over a batch of matrices,
where sigma_next = sigma_{r+1}(W) at the target rank r. eps_old = +inf marks a first fit,
which every schedule answers with sigma_{r+1}(W_0). No schedule ever increases eps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class PaperEps:
    """The paper's rule (eq. 7): eps <- min(eps, sigma_{r+1}(W))."""

    def __call__(self, eps_old: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.minimum(eps_old, sigma_next)


@dataclass(frozen=True)
class GeometricEps:
    """eps_0 = sigma_{r+1}(W_0), then eps <- max(decay * eps, floor) at every reweighting."""

    decay: float = 0.9
    floor: float = 1e-3

    def __post_init__(self):
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"geometric eps decay must lie in (0, 1], but got decay={self.decay}")
        if not self.floor >= 0.0:
            raise ValueError(f"geometric eps floor must be >= 0, but got floor={self.floor}")

    def __call__(self, eps_old: Tensor, sigma_next: Tensor) -> Tensor:
        decayed = torch.minimum(eps_old, torch.clamp_min(eps_old * self.decay, self.floor))
        return torch.where(torch.isinf(eps_old), sigma_next, decayed)


EpsSchedule = Callable[[Tensor, Tensor], Tensor]
SCHEDULES = {"paper": PaperEps, "geometric": GeometricEps}


def make_schedule(spec: Union[str, dict, EpsSchedule, None] = "paper") -> EpsSchedule:
    """A schedule from its name ("paper", "geometric"), a dict {"name": ..., **kwargs}, or itself."""
    if spec is None:
        return PaperEps()
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", "paper")
        if name not in SCHEDULES:
            raise ValueError(f"unknown eps schedule {name!r}; known: {sorted(SCHEDULES)}")
        return SCHEDULES[name](**kwargs)
    if callable(spec):
        return spec
    raise ValueError(f"eps schedule must be a name, a dict or a callable, but got {spec!r}")

"""Smoothing-parameter (epsilon) schedules for Algorithm 1, chosen by name.

A schedule maps (eps_old, sigma_next) to eps_new, elementwise over a batch of matrices,
where sigma_next = sigma_{r+1}(W) at the target rank r. eps_old = +inf marks a first fit,
which every schedule answers with sigma_{r+1}(W_0). No schedule ever increases eps, except
``WarmupEps`` during its warm-up (for an update that starts at zero).
A schedule with ``needs_first = True`` also receives eps_first, each matrix's eps after its
first fit (+inf before it), which the operator bank keeps and saves with its state; one with
``needs_count = True`` receives ``count``, the index of this reweighting (0, 1, 2, ...: the
bank's refreshes so far), which the bank also keeps; ``next_eps`` calls a schedule either way.
"""
from __future__ import annotations

import math
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


@dataclass(frozen=True)
class LinearEps:
    """The published Q3R code's "linear" schedule (``Wx.update_weightoperator`` in ThatE10/Q3R
    ``Functions/Q3R.py``): per matrix, eps_0 = sigma_{r+1}(W_0), then at every reweighting
    eps <- max(c * eps, final) with c = exp((log final - log eps_0) / steps), so eps decays
    geometrically from eps_0 to ``final`` (1e-5, the code's ``10e-6``) over ``steps`` reweightings
    and stays there. It ignores sigma_{r+1} after the first fit. Unlike the published code, eps
    never rises: a matrix whose eps_0 is already below ``final`` keeps eps_0.
    """

    steps: int
    final: float = 1e-5
    needs_first = True                                   # a class attribute, not a field

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"linear eps schedule needs steps, an int >= 1 (reweightings to reach final), "
                             f"but got steps={self.steps!r}")
        if not self.final > 0.0:
            raise ValueError(f"linear eps final must be > 0, but got final={self.final}")

    def __call__(self, eps_old: Tensor, sigma_next: Tensor, eps_first: Tensor) -> Tensor:
        old = eps_old.double()
        first = torch.where(torch.isinf(eps_first), old, eps_first.double())   # state lost: restart from here
        log_c = (math.log(self.final) - first.log()) / self.steps
        decayed = torch.minimum(old, torch.clamp_min(old * log_c.exp(), self.final))
        return torch.where(torch.isinf(eps_old), sigma_next.to(old.dtype), decayed).to(eps_old.dtype)


@dataclass(frozen=True)
class WarmupEps:
    """For an update that starts at zero (fine-tuning's Delta W): eps follows the update's own
    sigma_{r+1} for the first ``reweightings`` reweightings, then the paper's running minimum.

        k < K:   eps_k = sigma_{r+1}(W_k)                   (may rise: the update is still growing)
        k >= K:  eps_k = min(eps_{k-1}, sigma_{r+1}(W_k))   (eq. 7, from the last warm-up value)

    k counts the bank's reweightings from 0. With K = 0 this is ``PaperEps`` exactly. Why: under
    the paper's rule a Delta W that is zero at k = 0 and T Adam steps old at k = 1 fixes eps at
    its tiny sigma_{r+1} then, which later singular values of order 1 leave orders of magnitude
    behind, so R weights every direction by about eps / sigma_i and Q3R barely acts.
    """

    reweightings: int
    needs_count = True                                   # a class attribute, not a field

    def __post_init__(self):
        k = self.reweightings
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"warmup eps schedule needs reweightings, an int >= 0, but got reweightings={k!r}")

    def __call__(self, eps_old: Tensor, sigma_next: Tensor, count: int) -> Tensor:
        if count < self.reweightings:
            return sigma_next.clone()
        return torch.minimum(eps_old, sigma_next)


def next_eps(schedule, eps_old: Tensor, sigma_next: Tensor, eps_first: Tensor, count: int = 0) -> Tensor:
    """``schedule``'s new eps, passing eps_first and the reweighting count to the schedules that need them."""
    if getattr(schedule, "needs_first", False):
        return schedule(eps_old, sigma_next, eps_first)
    if getattr(schedule, "needs_count", False):
        return schedule(eps_old, sigma_next, count)
    return schedule(eps_old, sigma_next)


EpsSchedule = Callable[..., Tensor]
SCHEDULES = {"paper": PaperEps, "geometric": GeometricEps, "linear": LinearEps, "warmup": WarmupEps}


def make_schedule(spec: Union[str, dict, EpsSchedule, None] = "paper") -> EpsSchedule:
    """A schedule from its name ("paper", "geometric"), a dict {"name": ..., **kwargs} such as
    {"name": "linear", "steps": 1000} or {"name": "warmup", "reweightings": 20}, or itself."""
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

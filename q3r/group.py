"""One shape group of an ``OperatorBank`` (bank.py): its members' operators stacked as U (G, d1, k),
V (G, d2, k), sigma, s (G, k), eps (G,), with the host bookkeeping of the warm refresh, and the
read-back of an accelerator's answers without blocking."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from .apply import StepBuffers
from .packing import PackedWeights
from .targets import Target

_OPERATOR_FIELDS = frozenset({"U", "V", "s", "k_apply"})


@dataclass(eq=False)
class _Group:
    targets: list[Target]
    rank: int                       # r_target, the same for every member
    width: int                      # columns carried (host int)
    eps: Tensor                     # (G,), +inf before the first fit
    eps_first: Optional[Tensor] = None   # (G,), eps after the first fit (+inf before), for the "linear" schedule
    U: Optional[Tensor] = None      # (G, d1, width)
    V: Optional[Tensor] = None      # (G, d2, width)
    sigma: Optional[Tensor] = None  # (G, width)
    s: Optional[Tensor] = None      # (G, width)
    k_apply: int = 0                # leading columns with s < 0 somewhere in the group (host int)
    pending: Optional[tuple] = field(default=None, repr=False)  # host (r_env max, unconverged, eps = inf), event
    answers: Optional[tuple] = field(default=None, repr=False)  # the same on the device, from this refresh
    fresh: list[int] = field(default_factory=list)  # members with eps = +inf: no operator yet (host)
    packed: Optional[PackedWeights] = field(default=None, repr=False)  # the weights in one buffer, if packed
    buffers: StepBuffers = field(default_factory=StepBuffers, repr=False)  # descend's X, Y (apply.py)
    fit: int = field(default=0, repr=False)  # counts assignments to U, V, s, k_apply: the key of ``buffers``

    def __setattr__(self, name, value):
        if name in _OPERATOR_FIELDS:            # whoever sets the operators (a refresh, a loaded state, another
            object.__setattr__(self, "fit", getattr(self, "fit", 0) + 1)  # rank's message) starts a new fit
        object.__setattr__(self, name, value)

    @property
    def max_width(self) -> int:
        return min(self.targets[0].shape)

    def stacked(self, detach: bool = True) -> Tensor:
        """The members' weights (G, d1, d2): the packed buffer itself (detached only), else a copy."""
        if detach and self.packed is not None:
            buffer = self.packed.buffer()
            if buffer is not None:
                return buffer
        return self.copies(detach)

    def copies(self, detach: bool = True) -> Tensor:
        """The members' weights stacked into a new (G, d1, d2) tensor (float32 for half precision)."""
        ws = [t.weight.detach() if detach else t.weight for t in self.targets]
        W = torch.stack(ws)         # (G, d1, d2)
        return W.float() if W.dtype in (torch.float16, torch.bfloat16) else W   # SVDs need fp32+

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """U, V, s cut to the k_apply columns that can be non-zero."""
        k = self.k_apply
        return self.U[..., :k], self.V[..., :k], self.s[..., :k]


def _infinite(eps: Tensor) -> list[int]:
    """Members whose eps is still +inf (no operator yet), as a host list."""
    return torch.nonzero(torch.isinf(eps)).flatten().tolist()


def read_later(answers: Sequence[Tensor], device: torch.device) -> tuple:
    """Device answers copied to the host without blocking, with the event that says they arrived."""
    host = [a.to("cpu", non_blocking=True) for a in answers]
    event = torch.cuda.Event() if device.type == "cuda" else _Done()
    if isinstance(event, torch.cuda.Event):
        event.record()
    return (*host, event)


class _Done:
    """Stands in for a device event where there is nothing to wait for."""

    def synchronize(self) -> None:
        pass

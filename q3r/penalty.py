"""Q3R in the loss: a differentiable penalty that any optimizer can use (paper Table 8)."""
from __future__ import annotations

from typing import Iterable

from torch import Tensor

from .bank import OperatorBank
from .targets import as_targets


class Q3RPenalty:
    """sum_k Q3R_{W'_k, eps_k}(W_k), for ``loss = task_loss + lmbda * penalty()``.

    Each call of ``penalty()`` counts as one training step: the operators are reweighted
    (Algorithm 1) on calls 0, T, 2T, ... and the returned value is differentiable in the
    weights, with gradient R(W) per matrix. ``value()`` evaluates without counting a step.

    Args:
        targets: the regularized matrices (``select_targets(model)``, Linears or weights).
        target_rank: fraction p in (0, 1] per matrix, or an int rank.
        period: reweighting period T, in calls of ``penalty()``.
        eps_schedule, svd, power_iters, oversample, distributed, process_group: as for ``AdamQ3R``.
            Under DDP the penalty's gradient is averaged with the loss's, so with ``distributed``
            every rank's penalty uses the same operators.
    """

    def __init__(self, targets: Iterable, target_rank: float | int = 0.2, period: int = 5,
                 eps_schedule="paper", svd: str = "warm", power_iters: int = 1, oversample: int = 8,
                 distributed=None, process_group=None):
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"Invalid reweighting period: period={period!r} (an int >= 1)")
        self.targets = as_targets(targets)
        self.period = period
        self.bank = OperatorBank(self.targets, target_rank, eps_schedule, svd, power_iters, oversample,
                                 distributed=distributed, process_group=process_group)
        self.step = 0

    def penalty(self) -> Tensor:
        """Reweight if this step is a multiple of the period, then return the summed Q3R value."""
        if self.step % self.period == 0 or not self.bank.fitted:
            self.bank.refresh()
        self.step += 1
        return self.bank.total()

    __call__ = penalty

    def value(self) -> Tensor:
        """The summed Q3R value at the current operators, without counting a step."""
        return self.bank.total()

    def state_dict(self) -> dict:
        return {"step": self.step, "period": self.period, "operators": self.bank.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.bank.load_state_dict(state["operators"])

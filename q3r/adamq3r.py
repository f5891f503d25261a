"""AdamQ3R: Adam with the Q3R gradient applied outside Adam's moments (paper Algorithm 2)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch.optim import Adam
from torch.optim.adam import adam

from .bank import OperatorBank
from .operator import ReweightingOperator
from .targets import as_targets

_Q3R_DEFAULTS = ("target_rank", "lmbda", "period")


class AdamQ3R(Adam):
    r"""Adam whose regularized matrices also descend along the Q3R gradient, decoupled.

    .. math::
        g_t = \nabla L(W_t),\quad m_t, v_t, \hat m_t, \hat v_t \text{ as in Adam}

        R_t = R_{W_{t'}, \epsilon}(W_t),\ t' = T \lfloor t/T \rfloor \text{ (reweighted when } t \bmod T = 0)

        W_{t+1} = W_t - \alpha\,(\hat m_t / (\sqrt{\hat v_t} + \delta) + \lambda R_t)

    The Q3R term never enters m or v. Other parameters take a plain Adam step, with
    decoupled weight decay (AdamW-style) if ``weight_decay > 0``; regularized matrices get
    no weight decay. With ``lmbda=0`` this is exactly ``torch.optim.Adam``.

    Args:
        params: parameters or param groups; a group may override lr, target_rank, lmbda, period.
        lr (float): learning rate alpha (default 1e-3).
        betas (tuple): Adam's (beta1, beta2) (default (0.9, 0.999)).
        eps (float): Adam's delta (default 1e-8).
        weight_decay (float): decoupled weight decay of the non-regularized parameters (default 0).
        targets: the regularized matrices: ``select_targets(model)``, nn.Linear modules or weights.
        target_rank (float | int): fraction p in (0, 1] per matrix, r = r(p), or an int rank (default 0.2).
        lmbda (float): Q3R strength lambda (default 0.1).
        period (int): reweighting period T in optimizer steps (default 5).
        eps_schedule: "paper" (default), "geometric" or a dict such as {"name": "geometric", "decay": 0.8}
            or {"name": "linear", "steps": N} (the published code's decay to 1e-5 over N reweightings).
        svd: "warm" (default; warm-started subspace iteration) or "exact" (full SVD each reweighting).
        power_iters, oversample: accuracy knobs of the warm start (see ``OperatorBank``).
        pack (bool): keep each shape group's regularized weights in one buffer whose views are the
            parameters, so the Q3R step updates them in place (default True; see ``q3r/packing.py``).
            The parameters stay the model's own ``nn.Parameter`` objects. Under DDP, build the
            optimizer (which packs) before wrapping the model.
        distributed (str | bool | None): under torch.distributed (DDP), "share" (each rank reweights a
            part of the matrices, then sends it to the others; also True) or "broadcast" (rank 0 reweights, then
            broadcast), so every rank applies the same operators; None (default): each rank reweights
            alone. Without a process group, or with one rank, it changes nothing.
        process_group: the ranks that share the reweighting (default: the default group).

    Paper: Ghosh, Nguyen, Kuemmerle, "Q3R: Quadratic Reweighted Rank Regularizer for
    Effective Low-Rank Training", NeurIPS 2025, https://arxiv.org/abs/2511.04485
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        targets: Iterable,
        target_rank: float | int = 0.2,
        lmbda: float = 0.1,
        period: int = 5,
        eps_schedule="paper",
        svd: str = "warm",
        power_iters: int = 1,
        oversample: int = 8,
        foreach: Optional[bool] = None,
        pack: bool = True,
        distributed=None,
        process_group=None,
    ):
        if isinstance(lr, torch.Tensor):
            raise ValueError(f"AdamQ3R takes a float learning rate, but got lr={lr!r}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         foreach=foreach, decoupled_weight_decay=True)
        self.defaults.update(target_rank=target_rank, lmbda=lmbda, period=period)
        self._bank_options = dict(eps_schedule=eps_schedule, svd=svd, power_iters=power_iters,
                                  oversample=oversample, pack=pack, distributed=distributed,
                                  process_group=process_group)
        for group in self.param_groups:
            for key in _Q3R_DEFAULTS:
                group.setdefault(key, self.defaults[key])
            _validate(group)
        self.targets = as_targets(targets)
        self._q3r_step = 0
        self._banks = self._build_banks()
        self._regularized = frozenset(id(t.param) for t in self.targets)   # decided once, not per step

    def _build_banks(self) -> list[Optional[OperatorBank]]:
        owner = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        per_group = [[] for _ in self.param_groups]
        for t in self.targets:
            if id(t.param) not in owner:
                raise ValueError(f"target {t.name!r}: its parameter is not among the optimizer's params")
            per_group[owner[id(t.param)]].append(t)
        return [
            OperatorBank(ts, g["target_rank"], **self._bank_options) if ts else None
            for g, ts in zip(self.param_groups, per_group)
        ]

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamQ3R step; reweights the operators first when step mod period == 0."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, bank in zip(self.param_groups, self._banks):
            if bank is not None and group["lmbda"] != 0:
                if self._q3r_step % group["period"] == 0 or not bank.fitted:
                    bank.refresh()
                bank.descend(group["lr"] * group["lmbda"])   # W <- W - lr * lmbda * R(W_t)
            self._adam_step(group, self._regularized)
        self._q3r_step += 1
        return loss

    def _adam_step(self, group: dict, regularized: frozenset[int]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        for is_reg in (True, False):
            keep = [i for i, p in enumerate(params) if (id(p) in regularized) == is_reg]
            if not keep:
                continue
            sub = [[lst[i] for i in keep] if lst else [] for lst in lists]
            beta1, beta2 = group["betas"]
            adam(*sub, amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1, beta2=beta2,
                 lr=group["lr"], weight_decay=0.0 if is_reg else group["weight_decay"], eps=group["eps"],
                 maximize=group["maximize"], foreach=group["foreach"], capturable=group["capturable"],
                 differentiable=group["differentiable"], fused=group["fused"],
                 decoupled_weight_decay=True)

    # ---- inspection ------------------------------------------------------------------------
    def operators(self) -> dict[str, ReweightingOperator]:
        """The current reweighting operator of every target, by target name."""
        ops = {}
        for bank in self._banks:
            if bank is not None and bank.fitted:
                ops.update(bank.operators())
        return ops

    @property
    def banks(self) -> list[OperatorBank]:
        return [b for b in self._banks if b is not None]

    # ---- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["q3r"] = {"step": self._q3r_step,
                        "banks": [b.state_dict() if b is not None else None for b in self._banks]}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        q3r = state_dict.pop("q3r", None)
        if q3r is None:
            raise KeyError("this state_dict has no 'q3r' entry: it was not saved by AdamQ3R")
        if len(q3r["banks"]) != len(self._banks):
            raise ValueError(f"state has {len(q3r['banks'])} param groups, optimizer has {len(self._banks)}")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            _validate(group)
        self._q3r_step = int(q3r["step"])
        for bank, bank_state in zip(self._banks, q3r["banks"]):
            if bank is not None:
                bank.load_state_dict(bank_state)


def _validate(group: dict) -> None:
    if not group["lr"] >= 0.0:
        raise ValueError(f"Invalid learning rate: lr={group['lr']}")
    if not group["lmbda"] >= 0.0:
        raise ValueError(f"Invalid Q3R strength: lmbda={group['lmbda']}")
    period = group["period"]
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"Invalid reweighting period: period={period!r} (an int >= 1)")
    rank = group["target_rank"]
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"Invalid target rank: target_rank={rank!r}")
    if isinstance(rank, float) and not 0.0 < rank <= 1.0:
        raise ValueError(f"Invalid target rank: target_rank={rank} (a fraction in (0, 1] or an int rank)")
    if isinstance(rank, int) and rank < 1:
        raise ValueError(f"Invalid target rank: target_rank={rank} (an int rank must be >= 1)")

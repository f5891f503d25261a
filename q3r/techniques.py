"""The training techniques of one trial, chosen by name (a small registry, as in timm).

Every technique returns a ``Technique``: the module that trains, its optimizer, an optional
Q3R penalty, and ``dense_model()``: the same architecture with plain nn.Linear layers, which
the one truncation code scores for every technique alike.

- ``adamq3r``: AdamQ3R (Algorithm 2).          - ``adam_q3r_loss``: Adam on loss + lmbda * Q3R.
- ``adamw``: the unregularized baseline.        - ``lora``: rank-r(p) factors from scratch, or
- ``lorita``: products of ``depth`` matrices       peft LoRA adapters when fine-tuning.
  with weight decay ``alpha``.
With ``finetune=True``, ``adamq3r`` and ``adam_q3r_loss`` regularize an additive Delta W on
frozen pretrained weights (paper Section 5.2).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .adamq3r import AdamQ3R
from .bank import OperatorBank
from .layers import DeltaLinear, ProductLinear, merge_layers, replace_modules
from .penalty import Q3RPenalty
from .ranks import target_rank as rank_of
from .targets import Target, linear_targets, select_targets
from .truncation import LowRankLinear

HEADS = ("head", "classifier")     # trained in fine-tuning: timm's and Hugging Face's classifier


@dataclass
class Technique:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    penalty: Optional[Q3RPenalty] = None
    lmbda: float = 0.0
    merge: Optional[Callable[[nn.Module], nn.Module]] = field(default=None, repr=False)

    def extra_loss(self):
        """lmbda * Q3R penalty (counts one step of the penalty's period), or 0."""
        if self.penalty is None or self.lmbda == 0:
            return 0.0
        return self.lmbda * self.penalty.penalty()

    def banks(self) -> list[OperatorBank]:
        if isinstance(self.optimizer, AdamQ3R):
            return self.optimizer.banks
        return [self.penalty.bank] if self.penalty is not None else []

    def dense_model(self) -> nn.Module:
        return self.model if self.merge is None else self.merge(self.model)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "penalty": None if self.penalty is None else self.penalty.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.penalty is not None:
            self.penalty.load_state_dict(state["penalty"])


def _trainable(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]


def _targeted_linears(model: nn.Module, modules) -> list[str]:
    return sorted({t.param_name[: -len(".weight")] for t in select_targets(model, modules)})


def _freeze_all_but_heads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in HEADS)


def build_adamq3r(model, *, modules, lr, weight_decay, lmbda, target_rank, period, finetune, **_):
    if finetune:
        return _q3r_finetune("adamq3r", model, modules, lr, weight_decay, lmbda, target_rank, period)
    targets = select_targets(model, modules)
    opt = AdamQ3R(model.parameters(), lr=lr, weight_decay=weight_decay, targets=targets,
                  target_rank=target_rank, lmbda=lmbda, period=period)
    return Technique("adamq3r", model, opt, lmbda=lmbda)


def build_adam_q3r_loss(model, *, modules, lr, weight_decay, lmbda, target_rank, period, finetune, **_):
    if finetune:
        return _q3r_finetune("adam_q3r_loss", model, modules, lr, weight_decay, lmbda, target_rank, period)
    penalty = Q3RPenalty(select_targets(model, modules), target_rank, period)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return Technique("adam_q3r_loss", model, opt, penalty=penalty, lmbda=lmbda)


def _q3r_finetune(name, model, modules, lr, weight_decay, lmbda, target_rank, period):
    """Freeze the pretrained weights; Q3R acts on a zero-initialised Delta W per targeted matrix."""
    linear_names = _targeted_linears(model, modules)
    _freeze_all_but_heads(model)
    layers = replace_modules(model, linear_names, lambda _, lin: DeltaLinear(lin))
    targets = []
    for lname, layer in layers.items():
        for t in linear_targets(lname, layer.base_layer):
            targets.append(Target(layer.delta, t.name, f"{lname}.delta", t.row_start, t.row_end))
    if name == "adamq3r":
        opt = AdamQ3R(_trainable(model), lr=lr, weight_decay=weight_decay, targets=targets,
                      target_rank=target_rank, lmbda=lmbda, period=period)
        return Technique(name, model, opt, lmbda=lmbda, merge=merge_layers)
    penalty = Q3RPenalty(targets, target_rank, period)
    opt = torch.optim.Adam(_trainable(model), lr=lr, weight_decay=weight_decay)
    return Technique(name, model, opt, penalty=penalty, lmbda=lmbda, merge=merge_layers)


def build_adamw(model, *, lr, weight_decay, finetune, **_):
    return Technique("adamw", model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay))


def build_lora(model, *, modules, lr, weight_decay, target_rank, lora_rank, finetune, **_):
    if finetune:
        return _peft_lora(model, modules, lr, weight_decay, lora_rank or 8)
    if not isinstance(target_rank, float):
        raise ValueError(f"lora pre-training takes target_rank as a fraction in (0, 1], but got {target_rank!r}")

    def factorize(lname: str, lin: nn.Linear) -> LowRankLinear:
        segments = []
        for t in linear_targets(lname, lin):           # a fused qkv: three factor pairs
            r = rank_of(t.shape, target_rank)
            U, S, Vh = torch.linalg.svd(t.weight.detach(), full_matrices=False)
            root = S[:r].sqrt()                        # start at the best rank-r part of the random init
            segments.append((t.row_start, t.row_end, (U[:, :r] * root, root[:, None] * Vh[:r])))
        return LowRankLinear.from_linear(lin, segments)

    replace_modules(model, _targeted_linears(model, modules), factorize)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return Technique("lora", model, opt, merge=merge_layers)


def _peft_lora(model, modules, lr, weight_decay, rank):
    from peft import LoraConfig, get_peft_model

    names = _targeted_linears(model, modules)          # full names: a leaf like "dense" is also in heads
    heads = [h for h in HEADS if isinstance(getattr(model, h, None), nn.Module)]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=names,
                                                  modules_to_save=heads or None))
    opt = torch.optim.AdamW(_trainable(peft_model), lr=lr, weight_decay=weight_decay)
    return Technique("lora", peft_model, opt, merge=lambda m: copy.deepcopy(m).merge_and_unload())


def build_lorita(model, *, modules, lr, weight_decay, depth, alpha, finetune, **_):
    layers = replace_modules(model, _targeted_linears(model, modules), lambda _, lin: ProductLinear(lin, depth))
    factor_ids = {id(p) for layer in layers.values() for p in layer.factors}
    groups = [{"params": [p for p in model.parameters() if id(p) in factor_ids], "weight_decay": alpha},
              {"params": [p for p in model.parameters() if id(p) not in factor_ids], "weight_decay": weight_decay}]
    return Technique("lorita", model, torch.optim.AdamW(groups, lr=lr), merge=merge_layers)


TECHNIQUES: dict[str, Callable[..., Technique]] = {
    "adamq3r": build_adamq3r,
    "adam_q3r_loss": build_adam_q3r_loss,
    "adamw": build_adamw,
    "lora": build_lora,
    "lorita": build_lorita,
}


def list_techniques() -> list[str]:
    return sorted(TECHNIQUES)


def build_technique(name: str, model: nn.Module, *, modules=("qkv", "proj", "fc1", "fc2"), lr=1e-3,
                    weight_decay=0.0, lmbda=0.1, target_rank=0.2, period=5, depth=2, alpha=0.1,
                    lora_rank=None, finetune=False) -> Technique:
    """The technique ``name`` set up on ``model`` (which it may modify in place)."""
    if name not in TECHNIQUES:
        raise ValueError(f"unknown technique {name!r}; known: {list_techniques()}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, but got lr={lr!r}")
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    return TECHNIQUES[name](model, modules=modules, lr=lr, weight_decay=weight_decay, lmbda=lmbda,
                            target_rank=target_rank, period=period, depth=depth, alpha=alpha,
                            lora_rank=lora_rank, finetune=finetune)

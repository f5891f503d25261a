"""The training techniques of one trial, chosen by name (a small registry, as in timm).

Every technique returns a ``Technique``: the module that trains, its optimizer, an optional
Q3R penalty, and ``dense_model()``: the same architecture with plain nn.Linear layers, which
the one truncation code scores for every technique alike.

- ``adamq3r``: AdamQ3R (Algorithm 2).          - ``adam_q3r_loss``: Adam on loss + lmbda * Q3R.
- ``adamw``: the unregularized baseline.        - ``lora``: rank-r(p) factors from scratch (``lora_form``:
- ``lorita``: products of ``depth`` matrices       factorized, or the paper code's), or peft adapters when fine-tuning.
  with weight decay ``alpha`` (input-side factors as the LoRITa authors build them; ``lorita_form``).
With ``finetune=True``, ``adamq3r`` and ``adam_q3r_loss`` regularize an additive Delta W on
frozen pretrained weights (paper Section 5.2); ``lora`` uses peft adapters; ``adamw`` and
``lorita`` train every parameter (full fine-tuning).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.bank import OperatorBank
from q3r.penalty import Q3RPenalty
from q3r.ranks import resolve_rank
from q3r.targets import Target, linear_targets, select_targets
from q3r.truncation import LowRankLinear

from . import registry
from .layers import DeltaLinear, PaperLoRALinear, ProductLinear, merge_layers, replace_modules

HEADS = ("head", "classifier")     # trained in fine-tuning: timm's and Hugging Face's classifier
LORA_FORMS = ("factorized", "paper")
# Adam's multi-tensor step on every device: torch's default on GPU; on CPU (where torch's default loops over the
# parameters in Python) the same numbers with less Python per step (tests/trial/test_techniques.py).
FOREACH = True


@dataclass
class Technique:
    """What the training recipe needs from a technique (see the module docstring)."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    penalty: Optional[Q3RPenalty] = None
    lmbda: float = 0.0
    merge: Optional[Callable[[nn.Module], nn.Module]] = field(default=None, repr=False)

    def extra_loss(self):
        """lmbda * Q3R penalty (counts one step of the penalty's period), or 0.0."""
        if self.penalty is None or self.lmbda == 0:
            return 0.0
        return self.lmbda * self.penalty.penalty()

    def banks(self) -> list[OperatorBank]:
        """The reweighting operators, for diagnostics: AdamQ3R's or the penalty's."""
        if isinstance(self.optimizer, AdamQ3R):
            return self.optimizer.banks
        return [self.penalty.bank] if self.penalty is not None else []

    def dense_model(self) -> nn.Module:
        """``model`` itself where no layer was replaced; else a merged deep copy with plain Linears."""
        return self.model if self.merge is None else self.merge(self.model)

    def state_dict(self) -> dict:
        """Optimizer and penalty state (the model is saved separately)."""
        return {"optimizer": self.optimizer.state_dict(),
                "penalty": None if self.penalty is None else self.penalty.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.penalty is not None:
            self.penalty.load_state_dict(state["penalty"])


TECHNIQUES: dict[str, Callable[..., Technique]] = {}     # name -> builder; the names: registry.TECHNIQUES


def register(name: str):
    """Add a builder ``fn(model, **hyperparameters) -> Technique`` for the technique ``name`` declared in
    ``registry.TECHNIQUES`` (its extra options are read from there)."""
    registry.TECHNIQUES.get(name)

    def wrap(fn):
        TECHNIQUES[name] = fn
        return fn
    return wrap


def list_techniques() -> list[str]:
    return sorted(TECHNIQUES)


# ---- helpers ---------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _targeted_linears(model: nn.Module, modules) -> list[str]:
    """Full names of the targeted Linears (full, not leaf: a leaf "dense" is also in HF heads)."""
    return list(dict.fromkeys(t.param_name[: -len(".weight")] for t in select_targets(model, modules)))


def _freeze_all_but_heads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in HEADS)


def _q3r_groups(params, targets: list[Target], weight_decay: float) -> list[dict]:
    """Regularized matrices without weight decay, the rest with it (as AdamQ3R does)."""
    reg = {id(t.param) for t in targets}
    groups = [{"params": [p for p in params if id(p) in reg], "weight_decay": 0.0},
              {"params": [p for p in params if id(p) not in reg], "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def _q3r_technique(name, model, params, targets, lr, weight_decay, lmbda, target_rank, period, extra, merge=None):
    if name == "adamq3r":
        opt = AdamQ3R(params, lr=lr, weight_decay=weight_decay, targets=targets, target_rank=target_rank,
                      lmbda=lmbda, period=period, foreach=FOREACH, **extra)
        return Technique(name, model, opt, lmbda=lmbda, merge=merge)
    penalty = Q3RPenalty(targets, target_rank, period, **extra)
    opt = torch.optim.Adam(_q3r_groups(params, targets, weight_decay), lr=lr, decoupled_weight_decay=True,
                           foreach=FOREACH)
    return Technique(name, model, opt, penalty=penalty, lmbda=lmbda, merge=merge)


def _delta_targets(model, modules) -> dict[str, DeltaLinear]:
    """Freeze the pretrained model but its head; wrap each targeted Linear in a DeltaLinear."""
    names = _targeted_linears(model, modules)
    _freeze_all_but_heads(model)
    return replace_modules(model, names, lambda _, lin: DeltaLinear(lin))


# ---- the techniques --------------------------------------------------------------------------
@register("adamq3r")
def build_adamq3r(model, *, modules, lr, weight_decay, lmbda, target_rank, period, finetune, extra, **_):
    return _build_q3r("adamq3r", model, modules, lr, weight_decay, lmbda, target_rank, period, finetune, extra)


@register("adam_q3r_loss")
def build_adam_q3r_loss(model, *, modules, lr, weight_decay, lmbda, target_rank, period, finetune, extra, **_):
    return _build_q3r("adam_q3r_loss", model, modules, lr, weight_decay, lmbda, target_rank, period, finetune, extra)


def _build_q3r(name, model, modules, lr, weight_decay, lmbda, target_rank, period, finetune, extra):
    if not finetune:
        targets = select_targets(model, modules)
        return _q3r_technique(name, model, list(model.parameters()), targets, lr, weight_decay, lmbda,
                              target_rank, period, extra)
    # Fine-tuning (Section 5.2): Q3R acts on Delta W, split like the weight it updates (qkv in three);
    # target names are those of the weight, so diagnostics on dense_model() line up with the banks.
    targets = [Target(layer.delta, t.name, f"{lname}.delta", t.row_start, t.row_end)
               for lname, layer in _delta_targets(model, modules).items()
               for t in linear_targets(lname, layer.base_layer)]
    return _q3r_technique(name, model, _trainable(model), targets, lr, weight_decay, lmbda, target_rank,
                          period, extra, merge=merge_layers)


@register("adamw")
def build_adamw(model, *, lr, weight_decay, **_):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    return Technique("adamw", model, opt)


@register("lora")
def build_lora(model, *, modules, lr, weight_decay, target_rank, lora_rank, finetune, extra, **_):
    form = extra.get("lora_form", "factorized")
    if form not in LORA_FORMS:
        raise ValueError(f"lora_form must be one of {LORA_FORMS}, but got lora_form={form!r}")
    if finetune:
        if form == "paper":
            raise ValueError("lora_form paper is a pre-training form (it keeps no dense weight); fine-tuning "
                             "trains peft adapters: use lora_form factorized")
        return _peft_lora(model, modules, lr, weight_decay, lora_rank or 8, extra)
    if form == "paper":
        return _paper_lora(model, modules, lr, weight_decay, target_rank, extra.get("lora_alpha", 1.0))

    def factorize(lname: str, lin: nn.Linear) -> LowRankLinear:
        segments = []
        for t in linear_targets(lname, lin):           # a fused qkv: three d x d factor pairs
            r = resolve_rank(t.shape, target_rank)
            U, S, Vh = torch.linalg.svd(t.weight.detach(), full_matrices=False)
            root = S[:r].sqrt()                        # start at the best rank-r part of the random init
            segments.append((t.row_start, t.row_end, (U[:, :r] * root, root[:, None] * Vh[:r])))
        return LowRankLinear.from_linear(lin, segments)

    replace_modules(model, _targeted_linears(model, modules), factorize)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    return Technique("lora", model, opt, merge=merge_layers)


def _paper_lora(model, modules, lr, weight_decay, target_rank, alpha):
    """The paper code's LoRALinear on every targeted Linear, rank r(target_rank) per row segment."""
    def build(lname: str, lin: nn.Linear) -> PaperLoRALinear:
        segments = [(t.row_start, t.row_end, resolve_rank(t.shape, target_rank)) for t in linear_targets(lname, lin)]
        return PaperLoRALinear(lin, segments, alpha)

    replace_modules(model, _targeted_linears(model, modules), build)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    return Technique("lora", model, opt, merge=merge_layers)


def _peft_lora(model, modules, lr, weight_decay, rank, extra):
    from peft import LoraConfig, get_peft_model       # optional heavy import, checked when used

    names = _targeted_linears(model, modules)
    heads = [h for h in HEADS if isinstance(getattr(model, h, None), nn.Module)]
    config = LoraConfig(r=rank, lora_alpha=extra.get("lora_alpha", 2 * rank),
                        lora_dropout=extra.get("lora_dropout", 0.0), target_modules=names,
                        modules_to_save=heads or None)
    peft_model = get_peft_model(model, config)
    opt = torch.optim.AdamW(_trainable(peft_model), lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    return Technique("lora", peft_model, opt, merge=lambda m: copy.deepcopy(m).merge_and_unload())


@register("lorita")
def build_lorita(model, *, modules, lr, weight_decay, depth, alpha, extra, **_):
    form = extra.get("lorita_form", "input")

    def overparameterize(lname: str, lin: nn.Linear) -> ProductLinear:
        return ProductLinear(lin, depth, [(t.row_start, t.row_end) for t in linear_targets(lname, lin)], form=form)

    layers = replace_modules(model, _targeted_linears(model, modules), overparameterize)
    factor_ids = {id(p) for layer in layers.values() for p in layer.factors}
    groups = [{"params": [p for p in model.parameters() if id(p) in factor_ids], "weight_decay": alpha},
              {"params": [p for p in model.parameters() if id(p) not in factor_ids], "weight_decay": weight_decay}]
    return Technique("lorita", model, torch.optim.AdamW(groups, lr=lr, foreach=FOREACH), merge=merge_layers)


# ---- entry point -----------------------------------------------------------------------------
def build_technique(name: str, model: nn.Module, *, modules=("qkv", "proj", "fc1", "fc2"), lr=1e-3,
                    weight_decay=0.0, lmbda=0.1, target_rank=0.2, period=5, depth=2, alpha=0.1,
                    lora_rank=None, finetune=False, **extra) -> Technique:
    """The technique ``name`` set up on ``model`` (which it modifies in place: layers replaced,
    parameters frozen when fine-tuning).

    Args:
        modules: Linear names or patterns to treat (see ``select_targets``), or a preset name; empty or
            None: every nn.Linear but the classifier head.
        lr, weight_decay: learning rate and (decoupled) weight decay of the untreated parameters.
        lmbda, target_rank, period: Q3R strength, target rank (fraction p or int rank), reweighting period.
        depth, alpha: LoRITa's number of factors and their weight decay.
        lora_rank: peft LoRA rank when fine-tuning (default 8); LoRA pre-training uses r(target_rank).
        finetune: train on top of frozen pretrained weights (see the module docstring).
        extra: Q3R bank options (eps_schedule, svd, power_iters, oversample) for the Q3R techniques;
            lora_form ("factorized", the default, or "paper": the paper code's LoRALinear) for LoRA
            pre-training; lora_alpha (paper form: in (0, 1], default 1; peft: default 2 * rank) and
            lora_dropout (default 0) for peft LoRA; lorita_form ("input", the reference, or "output") for LoRITa.
    """
    if name not in TECHNIQUES:
        raise ValueError(f"unknown technique {name!r}; known: {list_techniques()}")
    allowed = registry.TECHNIQUES.get(name).extras
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise ValueError(f"technique {name!r} takes no options {unknown}; its extra options: {list(allowed)}")
    _validate(lr=lr, weight_decay=weight_decay, lmbda=lmbda, target_rank=target_rank, period=period, depth=depth,
              alpha=alpha, lora_rank=lora_rank)
    modules = (modules,) if isinstance(modules, str) else tuple(modules or ())   # (): all Linears but the head
    return TECHNIQUES[name](model, modules=modules, lr=lr, weight_decay=weight_decay, lmbda=lmbda,
                            target_rank=target_rank, period=period, depth=depth, alpha=alpha,
                            lora_rank=lora_rank, finetune=bool(finetune), extra=extra)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate(*, lr, weight_decay, lmbda, target_rank, period, depth, alpha, lora_rank) -> None:
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"learning rate must be > 0, but got {lr=}")
    for key, value in (("weight_decay", weight_decay), ("lmbda", lmbda), ("alpha", alpha)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{key} must be >= 0, but got {key}={value!r}")
    if not ((_is_int(target_rank) and target_rank >= 1)
            or (isinstance(target_rank, float) and 0.0 < target_rank <= 1.0)):
        raise ValueError(f"target_rank must be a fraction in (0, 1] or an int rank >= 1, but got {target_rank=}")
    if not (_is_int(period) and period >= 1):
        raise ValueError(f"period must be an int >= 1, but got {period=}")
    if not (_is_int(depth) and depth >= 1):
        raise ValueError(f"depth must be an int >= 1, but got {depth=}")
    if lora_rank is not None and not (_is_int(lora_rank) and lora_rank >= 1):
        raise ValueError(f"lora_rank must be None or an int >= 1, but got {lora_rank=}")

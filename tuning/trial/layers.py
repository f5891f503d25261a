"""Trainable replacements of nn.Linear for the techniques, each with ``to_linear()`` to merge.

As in peft's LoRA layers: one method (``merged_weight``) computes the layer's effective
weight and is reused by ``forward`` and by merging into a plain nn.Linear, which the one
truncation code then scores alike for every technique. LoRA pre-training reuses
``truncation.LowRankLinear`` (rank-r factor pairs per row segment, with the same contract).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def plain_linear(weight: Tensor, bias: Optional[Tensor]) -> nn.Linear:
    """An nn.Linear holding copies of ``weight`` (d_out, d_in) and ``bias``."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


class ProductLinear(nn.Module):
    """LoRITa (Alkhouri et al. 2024): each matrix is a product of ``depth`` trained factors.

    ``form="input"`` (the default, as the LoRITa authors' code and the Q3R paper's code build it):
    a (d_out, d_in) matrix is W_D W_{D-1} ... W_1 with W_1 .. W_{D-1} square (d_in, d_in) and W_D
    (d_out, d_in) carrying the bias, every factor initialised like a fresh nn.Linear (uniform in
    +-1/sqrt(d_in)); for pre-training the product replaces the layer, as in the reference.
    ``form="output"``: W = W_D ... W_2 W_1 with W_1 the original (d_out, d_in) weight and W_2 .. W_D
    square (d_out, d_out) identities, so the product starts at the original weight (for fine-tuning
    from pretrained weights). A Linear whose rows hold several matrices (a fused qkv, 3d x d) gets one
    product per row segment, so Q, K and V are each over-parameterised on their own, as in the
    reference's LoRITaQKV. Weight decay on the factors then favours low rank.
    """

    FORMS = ("input", "output")

    def __init__(self, linear: nn.Linear, depth: int, segments: Optional[Sequence[tuple[int, int]]] = None,
                 form: str = "input"):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"LoRITa depth must be an int >= 1, but got depth={depth!r}")
        if form not in self.FORMS:
            raise ValueError(f"LoRITa form must be one of {self.FORMS}, but got {form=}")
        W = linear.weight.detach()                                  # (d_out, d_in)
        self.in_features, self.out_features, self.form = linear.in_features, linear.out_features, form
        self.segments = list(segments) if segments else [(0, W.shape[0])]
        if sum(end - start for start, end in self.segments) != W.shape[0]:
            raise ValueError(f"segments {self.segments} must cover the {W.shape[0]} rows of the weight")
        kw = dict(device=W.device, dtype=W.dtype)
        self.products = nn.ModuleList()
        for start, end in self.segments:
            if form == "input":                                     # [W_1 (d_in, d_in), ..., W_D (d_seg, d_in)]
                shapes = [(self.in_features, self.in_features)] * (depth - 1) + [(end - start, self.in_features)]
                factors = [nn.Linear(d_in, d_o, bias=False, **kw).weight for d_o, d_in in shapes]
            else:                                                   # [W_1 = W (d_seg, d_in), I (d_seg, d_seg)...]
                eye = torch.eye(end - start, **kw)
                factors = [nn.Parameter(W[start:end].clone())] + [nn.Parameter(eye.clone()) for _ in range(depth - 1)]
            self.products.append(nn.ParameterList(factors))
        if linear.bias is None:
            self.bias = None
        elif form == "input":                                       # W_D's own nn.Linear bias init
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias = nn.Parameter(torch.empty(self.out_features, **kw).uniform_(-bound, bound))
        else:
            self.bias = nn.Parameter(linear.bias.detach().clone())

    @property
    def factors(self) -> list[nn.Parameter]:
        """Every factor of every product (the parameters that get weight decay alpha)."""
        return [f for product in self.products for f in product]

    def merged_weight(self) -> Tensor:
        """W_D ... W_2 W_1 per segment, stacked: (d_out, d_in)."""
        parts = []
        for product in self.products:
            W = product[0]                       # input: (d_in, d_in) or (d_seg, d_in) if D = 1; output: (d_seg, d_in)
            for f in product[1:]:
                W = f @ W                        # input: (., d_in) @ (d_in, d_in); output: (d_seg, d_seg) @ (d_seg, d_in)
            parts.append(W)
        return torch.cat(parts)                                     # (d_out, d_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        return plain_linear(self.merged_weight().detach(), None if self.bias is None else self.bias.detach())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"depth={len(self.products[0])}, segments={len(self.segments)}, form={self.form}")


class PaperLoRALinear(nn.Module):
    """The LoRA baseline of the Q3R paper's published code (its ``Functions/Lora.py``, ``LoRALinear``),
    for replication: y = x A B (alpha / r), A (d_in, r) and B (r, d_out) drawn from N(0, 0.01^2),
    alpha <= 1, NO bias and no dense weight. Its outputs start near zero (a product of two 0.01-scale
    factors, scaled down by alpha / r), unlike ``lora_form: factorized``, which starts at the best
    rank-r part of a fresh init. A Linear whose rows hold several matrices (a fused qkv) gets one
    factor pair per row segment ``(row_start, row_end, r)``, each scaled by alpha over its own r.
    """

    STD = 0.01

    def __init__(self, linear: nn.Linear, segments: Sequence[tuple[int, int, int]], alpha: float = 1.0):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"lora_alpha must be in (0, 1] for lora_form paper (the paper's code), but got "
                             f"lora_alpha={alpha!r}")
        self.in_features, self.out_features, self.alpha = linear.in_features, linear.out_features, float(alpha)
        self.segments = [(int(s), int(e), int(r)) for s, e, r in segments]
        if [(s, e) for s, e, _ in self.segments] != [(s, e) for s, e in _cover(self.segments)] or \
                self.segments[-1][1] != self.out_features or any(r < 1 for _, _, r in self.segments):
            raise ValueError(f"segments {self.segments} must cover the {self.out_features} rows in order, "
                             f"each with a rank >= 1")
        kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.A = nn.ParameterList([nn.Parameter(torch.randn(self.in_features, r, **kw) * self.STD)
                                   for _, _, r in self.segments])          # (d_in, r)
        self.B = nn.ParameterList([nn.Parameter(torch.randn(r, e - s, **kw) * self.STD)
                                   for s, e, r in self.segments])          # (r, d_out_seg)
        self.bias = None

    def scales(self) -> list[float]:
        """alpha / r of each segment."""
        return [self.alpha / r for _, _, r in self.segments]

    def merged_weight(self) -> Tensor:
        """(A B alpha / r)^T per segment, stacked: (d_out, d_in)."""
        return torch.cat([(A @ B).mT * c for A, B, c in zip(self.A, self.B, self.scales())])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([(x @ A @ B) * c for A, B, c in zip(self.A, self.B, self.scales())], dim=-1)

    def to_linear(self) -> nn.Linear:
        return plain_linear(self.merged_weight().detach(), None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"ranks={[r for _, _, r in self.segments]}, alpha={self.alpha}, bias=False")


def _cover(segments) -> list[tuple[int, int]]:
    """The contiguous row ranges from 0 that segments of these lengths would cover."""
    out, row = [], 0
    for s, e, _ in segments:
        out.append((row, row + (e - s)))
        row += e - s
    return out


class DeltaLinear(nn.Module):
    """Fine-tuning with Q3R (paper Section 5.2): y = x (W0 + Delta W)^T + b, W0 and b frozen.

    ``base_layer`` is the pretrained Linear; ``delta`` (same shape, zero at the start) is the
    trainable update that Q3R regularizes.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.base_layer = linear
        for p in linear.parameters():
            p.requires_grad_(False)
        self.delta = nn.Parameter(torch.zeros_like(linear.weight))  # (d_out, d_in)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def merged_weight(self) -> Tensor:
        return self.base_layer.weight + self.delta

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.base_layer.bias)

    def to_linear(self) -> nn.Linear:
        b = self.base_layer.bias
        return plain_linear(self.merged_weight().detach(), None if b is None else b.detach())


def replace_modules(model: nn.Module, names: Sequence[str],
                    build: Callable[[str, nn.Module], nn.Module]) -> dict[str, nn.Module]:
    """Replace each named submodule by ``build(name, module)``, in place; returns {name: new module}."""
    new = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)              # "" is the model itself
        new[name] = build(name, getattr(parent, leaf))
        setattr(parent, leaf, new[name])
    return new


def merge_layers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every layer with ``to_linear()`` is a plain nn.Linear."""
    clone = copy.deepcopy(model)
    names = [n for n, m in clone.named_modules() if n and hasattr(m, "to_linear")]
    replace_modules(clone, names, lambda _, m: m.to_linear())
    return clone

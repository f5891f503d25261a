"""Trainable replacements of nn.Linear for the techniques, each with ``to_linear()`` to merge.

As in peft's LoRA layers: one method (``merged_weight``) computes the layer's effective
weight and is reused by ``forward`` and by merging into a plain nn.Linear, which the one
truncation code then scores alike for every technique. LoRA pre-training reuses
``truncation.LowRankLinear`` (rank-r factor pairs per row segment, with the same contract).
"""
from __future__ import annotations

import copy
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
    """LoRITa (Alkhouri et al. 2024): each matrix is a product W = W_D ... W_2 W_1.

    Convention: W_1 is (d_out, d_in) and W_2 .. W_D are square (d_out, d_out), i.e. the extra
    factors act on the output side. A Linear whose rows hold several matrices (a fused qkv,
    3d x d) gets one product per row segment, so Q, K and V are each over-parameterised as
    d x d products. Initialised at W_1 = the original weight and W_k = I, so the product starts
    at the original weight; weight decay on the factors then favours low rank.
    """

    def __init__(self, linear: nn.Linear, depth: int, segments: Optional[Sequence[tuple[int, int]]] = None):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"LoRITa depth must be an int >= 1, but got depth={depth!r}")
        W = linear.weight.detach()                                  # (d_out, d_in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.segments = list(segments) if segments else [(0, W.shape[0])]
        if sum(end - start for start, end in self.segments) != W.shape[0]:
            raise ValueError(f"segments {self.segments} must cover the {W.shape[0]} rows of the weight")
        self.products = nn.ModuleList()
        for start, end in self.segments:
            eye = torch.eye(end - start, device=W.device, dtype=W.dtype)
            self.products.append(nn.ParameterList(
                [nn.Parameter(W[start:end].clone())] + [nn.Parameter(eye.clone()) for _ in range(depth - 1)]))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def factors(self) -> list[nn.Parameter]:
        """Every factor of every product (the parameters that get weight decay alpha)."""
        return [f for product in self.products for f in product]

    def merged_weight(self) -> Tensor:
        parts = []
        for product in self.products:
            W = product[0]                                          # (d_seg, d_in)
            for f in product[1:]:
                W = f @ W                                           # (d_seg, d_seg) @ (d_seg, d_in)
            parts.append(W)
        return torch.cat(parts)                                     # (d_out, d_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        return plain_linear(self.merged_weight().detach(), None if self.bias is None else self.bias.detach())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"depth={len(self.products[0])}, segments={len(self.segments)}")


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
        parent = model.get_submodule(parent_name) if parent_name else model
        new[name] = build(name, getattr(parent, leaf))
        setattr(parent, leaf, new[name])
    return new


def merge_layers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every layer with ``to_linear()`` is a plain nn.Linear."""
    clone = copy.deepcopy(model)
    names = [n for n, m in clone.named_modules() if n and hasattr(m, "to_linear")]
    replace_modules(clone, names, lambda _, m: m.to_linear())
    return clone

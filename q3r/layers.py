"""Trainable replacements of nn.Linear for the baselines, each with ``to_linear()`` to merge.

Like peft's LoRA layers: one method computes the layer's effective weight, reused by
``forward`` and by merging into a plain Linear for truncation scoring.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _plain_linear(weight: Tensor, bias) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


class ProductLinear(nn.Module):
    """LoRITa: W = W_D ... W_2 W_1 with W_1 (d_out, d_in) and W_2..W_D (d_out, d_out).

    Initialised at W_1 = the original weight and W_k = I, so the product starts at the
    original weight; weight decay on the factors then favours low rank (Alkhouri et al. 2024).
    """

    def __init__(self, linear: nn.Linear, depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"LoRITa depth must be >= 1, but got depth={depth}")
        W = linear.weight.detach()
        eye = torch.eye(W.shape[0], device=W.device, dtype=W.dtype)
        self.factors = nn.ParameterList([nn.Parameter(W.clone())] + [nn.Parameter(eye.clone()) for _ in range(depth - 1)])
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def merged_weight(self) -> Tensor:
        W = self.factors[0]
        for f in self.factors[1:]:
            W = f @ W                                     # (d_out, d_in)
        return W

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        return _plain_linear(self.merged_weight().detach(), None if self.bias is None else self.bias.detach())


class DeltaLinear(nn.Module):
    """Fine-tuning with Q3R (paper Section 5.2): y = x (W0 + Delta W)^T + b, W0 frozen.

    ``delta`` starts at zero and is the matrix that Q3R regularizes.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.base_layer = linear
        for p in linear.parameters():
            p.requires_grad_(False)
        self.delta = nn.Parameter(torch.zeros_like(linear.weight))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def merged_weight(self) -> Tensor:
        return self.base_layer.weight + self.delta

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + F.linear(x, self.delta)

    def to_linear(self) -> nn.Linear:
        b = self.base_layer.bias
        return _plain_linear(self.merged_weight().detach(), None if b is None else b.detach())


def replace_modules(model: nn.Module, names, build) -> dict[str, nn.Module]:
    """Replace each named submodule by ``build(name, module)``; returns {name: new module}."""
    new = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new[name] = build(name, getattr(parent, leaf))
        setattr(parent, leaf, new[name])
    return new


def merge_layers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every layer with ``to_linear()`` is a plain nn.Linear."""
    import copy

    clone = copy.deepcopy(model)
    names = [n for n, m in clone.named_modules() if n and hasattr(m, "to_linear")]
    replace_modules(clone, names, lambda _, m: m.to_linear())
    return clone

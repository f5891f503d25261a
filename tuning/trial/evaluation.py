"""Scoring: accuracy of the full model and after truncation at each retention level.

K retention levels cost one SVD per targeted matrix (``SpectralCache``) plus K evaluation
passes with the truncated weights swapped in place. A fine-tuned model is scored with its update
truncated instead (``base`` given: W0 + [W - W0]_r, ``q3r.delta.DeltaSpectra``).
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from q3r.delta import DeltaSpectra
from q3r.targets import Target
from q3r.truncation import SpectralCache

from .metrics import ACC, acc_key, level_key, params_key, targeted_key


def forward_batch(model: nn.Module, batch, device: torch.device):
    """(logits, labels) of an image batch (x, y) or a tokenized batch {"input_ids", ..., "labels"}."""
    if isinstance(batch, dict):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        return model(**batch).logits, labels
    x, y = batch
    return model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False) -> float:
    """Top-1 accuracy (for a one-output regression head: Pearson correlation)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    preds, golds = [], []
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, y = forward_batch(model, batch, device)
        if logits.shape[-1] == 1:
            preds.append(logits.float().squeeze(-1).cpu())
            golds.append(y.float().cpu())
            continue
        correct += (logits.argmax(-1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    if preds:
        return float(torch.corrcoef(torch.stack([torch.cat(preds), torch.cat(golds)]))[0, 1])
    return correct / max(total, 1)


def score(model: nn.Module, targets: Sequence[Target], loader: Iterable, retentions: Sequence[float],
          device: torch.device, amp: bool = False, base: Optional[dict] = None) -> tuple[dict, SpectralCache]:
    """{"acc", "acc@p", "params@p", "targeted@p"} for every level p; "acc" is the full model.

    ``base``: {target name: W0}, the pretrained matrices; then each target's update W - W0 is
    truncated (W0 + [W - W0]_r(p)) and params@p counts the update's factors in place of the matrix.
    """
    return score_metric(model, targets, lambda m: accuracy(m, loader, device, amp), retentions, base)


def score_metric(model: nn.Module, targets: Sequence[Target], metric: Callable[[nn.Module], float],
                 retentions: Sequence[float], base: Optional[dict] = None) -> tuple[dict, SpectralCache]:
    """``score`` with any metric: ``metric(model) -> float`` is called on the model with every target
    truncated to rank r(p), for every level p (one SVD per matrix), and its values are reported under
    the keys "acc@p" ("acc": the full model)."""
    cache = SpectralCache(targets) if base is None else DeltaSpectra(targets, base)
    out: dict = {}
    for p in map(float, retentions):
        with cache.applied(p):
            out[acc_key(p)] = _value(metric(model), level_key(p))
        counts = cache.counts(model, p)
        out[params_key(p)] = counts["model_kept"]
        out[targeted_key(p)] = counts["targeted_kept"] / counts["targeted_dense"]
    full = acc_key(1.0)
    out[ACC] = out[full] if full in out else _value(metric(model), level_key(1.0))
    return out, cache


def _value(x, key: str) -> float:
    """The metric's value as a float; a one-line error naming the level when it is not a number."""
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"evaluate(model) must return a float, but at retention {key} it returned {x!r}")
    return float(x)

"""Scoring: accuracy (and, for a ``val_loss`` sweep, the validation loss) of the full model and after
truncation at each retention level.

K retention levels cost one SVD per targeted matrix (``SpectralCache``) plus K evaluation
passes with the truncated weights swapped in place. A fine-tuned model is scored with its update
truncated instead (``base`` given: W0 + [W - W0]_r, ``q3r.delta.DeltaSpectra``).
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from q3r.delta import DeltaSpectra
from q3r.targets import Target
from q3r.truncation import SpectralCache

from .metrics import ACC, DEFAULT_METRIC, VAL_LOSS, Metric, key, level_key, params_key, targeted_key


def forward_batch(model: nn.Module, batch, device: torch.device):
    """(logits, labels) of an image batch (x, y) or a tokenized batch {"input_ids", ..., "labels"}."""
    if isinstance(batch, dict):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        return model(**batch).logits, labels
    x, y = batch
    return model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


def task_loss(logits, y, reduction: str = "mean"):
    """The training loss: cross-entropy, or the mean squared error of a one-output regression head (GLUE STS-B)."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), y.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), y, reduction=reduction)


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False,
                      with_loss: bool = True) -> tuple[float, Optional[float]]:
    """(top-1 accuracy, mean ``task_loss`` per example, or None without ``with_loss``) in one pass; for a
    one-output regression head the accuracy is the Pearson correlation. Sums stay on the device: one
    host sync per pass."""
    was_training = model.training
    model.eval()
    total = 0
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    preds, golds = [], []
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, y = forward_batch(model, batch, device)
        if with_loss:
            loss_sum += task_loss(logits, y, reduction="sum").double()
        total += len(y)
        if logits.shape[-1] == 1:
            preds.append(logits.float().squeeze(-1).cpu())
            golds.append(y.float().cpu())
            continue
        correct += (logits.argmax(-1) == y).sum()
    model.train(was_training)
    loss = float(loss_sum) / max(total, 1) if with_loss else None
    if preds:
        return float(torch.corrcoef(torch.stack([torch.cat(preds), torch.cat(golds)]))[0, 1]), loss
    return int(correct) / max(total, 1), loss


def accuracy(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False) -> float:
    """Top-1 accuracy (for a one-output regression head: Pearson correlation)."""
    return accuracy_and_loss(model, loader, device, amp, with_loss=False)[0]


def score(model: nn.Module, targets: Sequence[Target], loader: Iterable, retentions: Sequence[float],
          device: torch.device, amp: bool = False, base: Optional[dict] = None,
          metric: Metric = DEFAULT_METRIC) -> tuple[dict, SpectralCache]:
    """{"acc", "acc@p", "params@p", "targeted@p"} for every level p; "acc" is the full model. For the
    metric ``val_loss`` also "val_loss" and "val_loss@p", from the same passes.

    ``base``: {target name: W0}, the pretrained matrices; then each target's update W - W0 is
    truncated (W0 + [W - W0]_r(p)) and params@p counts the update's factors in place of the matrix.
    """
    # the built-in evaluate returns named values ({"acc": ...}), so score_metric needs no metric to name them
    return score_metric(model, targets, builtin_evaluate(loader, device, amp, metric), retentions, base)


def builtin_evaluate(loader: Iterable, device: torch.device, amp: bool = False,
                   metric: Metric = DEFAULT_METRIC) -> Callable[[nn.Module], dict]:
    """The built-in recipe's ``evaluate``: ``model -> {"acc": accuracy}``, plus ``"val_loss"`` (from the
    same pass) when that is the sweep's metric."""
    def evaluate(model: nn.Module) -> dict:
        acc, loss = accuracy_and_loss(model, loader, device, amp, with_loss=metric.name == VAL_LOSS)
        return {ACC: acc} if loss is None else {ACC: acc, VAL_LOSS: loss}
    evaluate.pure = True            # the same weights score the same (see score_metric)
    return evaluate


def score_metric(model: nn.Module, targets: Sequence[Target], evaluate: Callable[[nn.Module], object],
                 retentions: Sequence[float], base: Optional[dict] = None,
                 metric: Metric = DEFAULT_METRIC) -> tuple[dict, SpectralCache]:
    """``score`` with any metric: ``evaluate(model)`` is called on the model with every target truncated
    to rank r(p), for every level p (one SVD per matrix). It returns the metric's value (a float, reported
    as ``metric.at(p)``, e.g. "acc@0.2" or "val_loss@0.2") or several named values ({name: float}, each
    reported as "name@p"); the full model's values under the bare names ("acc"). An ``evaluate`` marked
    ``evaluate.pure = True`` (the built-in one: the same weights score the same) runs once for levels that
    truncate to the same weights (a LoRA trial's at every p past its rank)."""
    cache = SpectralCache(targets) if base is None else DeltaSpectra(targets, base)
    pure = getattr(evaluate, "pure", False)
    scored: dict = {}                                          # level ranks -> values, for a pure evaluate

    def values(p: float) -> dict:
        x = evaluate(model)
        named = x.items() if isinstance(x, dict) else [(metric.key, x)]
        return {name: _value(v, level_key(p)) for name, v in named}

    out: dict = {}
    full = None                                                # the full model's values, when p = 1 is a level
    for i, p in enumerate(map(float, retentions)):
        same = cache.level_ranks(p) if pure else i
        if same not in scored:
            with cache.applied(p):
                scored[same] = values(p)
        got = scored[same]
        out.update({key(name, p): v for name, v in got.items()})
        full = got if p == 1.0 else full
        counts = cache.counts(model, p)
        out[params_key(p)] = counts["model_kept"]
        out[targeted_key(p)] = counts["targeted_kept"] / counts["targeted_dense"]
    out.update(full if full is not None else values(1.0))
    return out, cache


def _value(x, key: str) -> float:
    """The metric's value as a float; a one-line error naming the level when it is not a number."""
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"evaluate(model) must return a float, but at retention {key} it returned {x!r}")
    return float(x)

"""What a trial spec regularizes: each targeted matrix, its shape, r(p) at every retention, and the
parameter shares (``q3r-tune targets SPEC``), as peft's ``print_trainable_parameters`` does.

``spec_targets(cfg)`` builds the spec's model as a trial does (same seed, same data facts) and returns
a ``TargetsReport``; ``format_targets`` only writes it out. Nothing trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from q3r.targets import classifier_head, select_targets
from q3r.truncation import retained_rank, stored_numbers

from .data import load_dataset
from .metrics import level_key
from .models import build_model
from .spec import TrialSpec


@dataclass(frozen=True)
class TargetRow:
    name: str                                # "blocks.0.attn.qkv[q]"
    shape: tuple[int, int]
    ranks: dict[str, Optional[int]]          # level -> r(p); None: kept whole (p = 1)


@dataclass
class TargetsReport:
    model: str                               # the model's class name
    rows: list[TargetRow]
    total: int                               # parameters of the whole model
    targeted: int                            # parameters in the targeted matrices
    kept: dict[str, int] = field(default_factory=dict)   # level -> whole-model parameters after truncation
    head: Optional[str] = None               # the classifier head (never regularized by default)
    untargeted: list[str] = field(default_factory=list)  # nn.Linear layers left alone

    @property
    def share(self) -> float:
        return self.targeted / self.total if self.total else 0.0


def model_targets(model: nn.Module, modules, retentions) -> TargetsReport:
    """The report of ``model`` for the patterns ``modules`` (empty: every nn.Linear but the head)."""
    targets = select_targets(model, tuple(modules or ()))
    levels = [level_key(p) for p in retentions]
    rows = [TargetRow(t.name, t.shape, {k: retained_rank(t.shape, float(k)) for k in levels}) for t in targets]
    total = sum(p.numel() for p in model.parameters())
    targeted = sum(t.numel for t in targets)
    kept = {k: total - targeted + sum(stored_numbers(t.shape, min(t.shape), float(k)) for t in targets) for k in levels}
    chosen = {t.param_name.removesuffix(".weight") for t in targets}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return TargetsReport(type(model).__name__, rows, total, targeted, kept, classifier_head(model),
                         [n for n in linears if n not in chosen])


def spec_targets(cfg: TrialSpec) -> TargetsReport:
    """The report of the model ``cfg`` trains (built as ``run_trial`` builds it, on CPU)."""
    d = cfg.data
    _, _, info = load_dataset(d.name, data_root=d.data_root, seed=cfg.train.seed, augment=d.augment,
                              download=d.download, image_size=d.image_size, task=d.task, tokenizer=d.tokenizer,
                              max_length=d.max_length, limit=1, classes=d.classes, factory=d.factory,
                              kwargs=d.kwargs, code=d.code)
    torch.manual_seed(cfg.train.seed)
    return model_targets(build_model(cfg.model, info), cfg.model.modules, cfg.train.retentions)


def format_targets(report: TargetsReport) -> str:
    """The table: one line per matrix, then the totals (peft's "trainable params: ... || all params")."""
    levels = list(report.kept)
    width = max([len(r.name) for r in report.rows] + [6])
    head = f"{'matrix':<{width}}  {'shape':>11}  " + "  ".join(f"{'r@' + k:>6}" for k in levels)
    lines = [f"{report.model}: {len(report.rows)} matrices regularized", head]
    for r in report.rows:
        ranks = "  ".join(f"{'full' if v is None else v:>6}" for v in r.ranks.values())
        lines.append(f"{r.name:<{width}}  {f'{r.shape[0]}x{r.shape[1]}':>11}  {ranks}")
    lines.append(f"regularized params: {report.targeted:,} || all params: {report.total:,} || "
                 f"regularized%: {100 * report.share:.2f}")
    lines.append("params after truncation: " + ", ".join(f"p={k}: {n:,}" for k, n in report.kept.items()))
    if report.untargeted:
        shown = ", ".join(report.untargeted[:8]) + (" ..." if len(report.untargeted) > 8 else "")
        lines.append(f"nn.Linear left alone: {shown}" + (f" (classifier head: {report.head})" if report.head in
                                                         report.untargeted else ""))
    return "\n".join(lines)

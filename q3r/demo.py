"""A real training run on the embedded digits data: AdamW against AdamQ3R, scored by truncation.

This is the main job until the sweep exists: it trains the same small ViT twice and prints
the validation accuracy of each after truncating every targeted matrix to rank r(p).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import AdamQ3R, SpectralCache, parameter_counts, select_targets
from .data import load_digits
from .models import build_vit

RETENTIONS = (0.05, 0.1, 0.2, 0.4, 1.0)


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def train(technique: str, epochs: int, seed: int = 0, lr: float = 1e-3, lmbda: float = 1.0,
          target_rank: float = 0.1, period: int = 5) -> dict:
    train_set, val_set, info = load_digits(seed)
    torch.manual_seed(seed)
    model = build_vit(info, depth=4, width=64)
    targets = select_targets(model)
    if technique == "adamq3r":
        opt = AdamQ3R(model.parameters(), lr=lr, targets=targets, target_rank=target_rank, lmbda=lmbda, period=period)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(val_set, batch_size=512)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    cache = SpectralCache(targets)
    scores = {}
    for p in RETENTIONS:
        with cache.applied(p):
            scores[p] = accuracy(model, val)
    return {"scores": scores, "seconds": time.perf_counter() - start,
            "params": {p: parameter_counts(model, targets, p)["model_kept"] for p in RETENTIONS}}


def main(epochs: int = 30, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    print(f"digits, ViT 4 blocks x 64 wide, {epochs} epochs; accuracy after truncation at retention p")
    rows = {}
    for technique in ("adamw", "adamq3r"):
        rows[technique] = train(technique, epochs)
        print(f"  trained {technique} in {rows[technique]['seconds']:.0f}s")
    header = "technique  " + "  ".join(f"p={p:<5}" for p in RETENTIONS)
    print(header)
    for technique, r in rows.items():
        print(f"{technique:<10} " + "  ".join(f"{r['scores'][p]:<7.3f}" for p in RETENTIONS))
    print("params     " + "  ".join(f"{rows['adamw']['params'][p]:<7d}" for p in RETENTIONS))

"""How far the warm-started eps drifts from the exact one, at the corners of the default search space.

Method (issue 15): AdamQ3R with ``svd="exact"`` trains a ViT (2 blocks x 64 wide, patch 2) on
scikit-learn's 8x8 digits; after every reweighting, shadow ``OperatorBank``s with other options
are refreshed on the same weights, and their eps is compared with the exact one. Prints, per
corner (lambda, lr, target rank), the largest relative deviation |eps_shadow - eps_exact| /
eps_exact over all matrices and reweightings, and for the default shadow the share of matrix
refreshes that needed extra iterations or a full SVD.

Shadows: "old" is the behaviour before the convergence check (``ritz_tol=inf``: every Ritz value
may lower eps), "default" the bank's defaults; "power2" the old behaviour with 2 iterations.

    python benchmarks/warm_eps.py                        # 8 corners, 200 reweightings (~4 min)
    python benchmarks/warm_eps.py --reweightings 400 --shadows old default power2
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
import torch.nn.functional as F

import q3r
from q3r.bank import OperatorBank

SHADOWS = {"old": dict(ritz_tol=math.inf), "default": {}, "power2": dict(ritz_tol=math.inf, power_iters=2)}
CORNERS = list(itertools.product([0.3, 30.0], [5e-4, 3e-3], [0.05, 0.2]))   # lambda, lr, target rank


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return (X - X.mean()) / X.std(), torch.tensor(y)


def vit(seed: int, depth: int = 2, width: int = 64) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=width,
                             depth=depth, num_heads=4)


def eps_deviation(model, X, y, lmbda, lr, target, reweightings, shadows, period=5, batch=32, seed=0):
    """Max relative eps deviation of each shadow bank from the exact run, per reweighting."""
    opt = q3r.AdamQ3R(model.parameters(), lr=lr, targets=q3r.select_targets(model), target_rank=target,
                      lmbda=lmbda, period=period, svd="exact")
    banks = {name: OperatorBank(opt.targets, target, **kw) for name, kw in shadows.items()}
    devs = {name: [] for name in shadows}
    g = torch.Generator().manual_seed(seed)
    for step in range(reweightings * period):
        idx = torch.randint(0, len(X), (batch,), generator=g)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        reweights = step % period == 0
        if reweights:                                   # the weights opt.step() reweights at
            for bank in banks.values():
                bank.refresh()
        opt.step()
        if reweights:
            exact = torch.cat([gr.eps for gr in opt.banks[0].groups])
            for name, bank in banks.items():
                eps = torch.cat([gr.eps for gr in bank.groups])
                devs[name].append(((eps - exact).abs() / exact).max().item())
    return devs, banks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reweightings", type=int, default=200)
    p.add_argument("--shadows", nargs="+", default=["old", "default"], choices=list(SHADOWS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke-test", action="store_true", help="one corner, 4 reweightings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    corners = CORNERS[-1:] if args.smoke_test else CORNERS
    if args.smoke_test:
        args.reweightings = 4
    X, y = digits()
    shadows = {name: SHADOWS[name] for name in args.shadows}
    print(f"max relative eps deviation from svd='exact' over {args.reweightings} reweightings (T = 5), "
          f"ViT 2x64 on digits, seed {args.seed}, torch {torch.__version__}")
    print(f"{'lambda':>7} {'lr':>7} {'target':>7} " + " ".join(f"{n:>8}" for n in shadows)
          + "   default: refreshes refined / full SVD   time")
    worst = {name: 0.0 for name in shadows}
    for lmbda, lr, target in corners:
        start = time.perf_counter()
        devs, banks = eps_deviation(vit(args.seed), X, y, lmbda, lr, target, args.reweightings, shadows,
                                    seed=args.seed)
        row = f"{lmbda:>7g} {lr:>7g} {target:>7g} " + " ".join(f"{100 * max(d):>7.2f}%" for d in devs.values())
        if "default" in banks:
            fits = banks["default"].fits
            total = fits["refresh"]
            row += f"   {100 * fits['refine'] / total:6.2f}% / {100 * fits['svd'] / total:5.2f}%"
        print(row + f"   {time.perf_counter() - start:5.1f}s", flush=True)
        for name in shadows:
            worst[name] = max(worst[name], max(devs[name]))
    print(f"{'worst':>23} " + " ".join(f"{100 * w:>7.2f}%" for w in worst.values()))


if __name__ == "__main__":
    main()

"""How far the warm-started eps drifts from the exact one, at the corners of the default search space.

Method (issue 15, widths from issue 23): AdamQ3R with ``svd="exact"`` trains a ViT (2 blocks,
patch 2, ``--width`` wide with width / 64 heads) on scikit-learn's 8x8 digits; after every
reweighting, shadow ``OperatorBank``s with other options are refreshed on the same weights, and
their eps is compared with the exact one. Prints, per width and corner (lambda, lr, target rank),
the largest relative deviation |eps_shadow - eps_exact| / eps_exact over all matrices and
reweightings; for the default shadow, the share of matrix refreshes that needed extra
iterations and the share done by a full SVD; and the cost of the default's refreshes against
one warm iteration's ("old", timed on the same weights in the same run), as a ratio of
refresh times and of step times (a training period of T steps plus one refresh), with the
range over blocks of 20 reweightings.

Shadows: "old" is one warm iteration whose every Ritz value may lower eps (``ritz_tol=inf``, the
behaviour before the convergence check), "default" the bank's defaults; "power2" the old
behaviour with 2 iterations.

    python benchmarks/warm_eps.py                                  # width 64, 8 corners, 200 reweightings
    python benchmarks/warm_eps.py --width 64 192                   # both widths, 8 corners each
    python benchmarks/warm_eps.py --width 384 --corner 7           # one corner: lambda 30, lr 3e-3, target 0.2
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import q3r
from q3r.bank import OperatorBank

SHADOWS = {"old": dict(ritz_tol=math.inf), "default": {}, "power2": dict(ritz_tol=math.inf, power_iters=2)}
CORNERS = list(itertools.product([0.3, 30.0], [5e-4, 3e-3], [0.05, 0.2]))   # lambda, lr, target rank
BLOCK = 20                                      # reweightings per timing block


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return (X - X.mean()) / X.std(), torch.tensor(y)


def vit(seed: int, depth: int = 2, width: int = 64) -> torch.nn.Module:
    """A timm ViT for 8x8 digits, ``width`` wide with width / 64 heads (ViT-Tiny's 192: 3, ViT-Small's 384: 6)."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=width,
                             depth=depth, num_heads=max(1, width // 64))


def eps_deviation(model, X, y, lmbda, lr, target, reweightings, shadows, period=5, batch=32, seed=0,
                  progress=None):
    """Max relative eps deviation of each shadow bank from the exact run, per reweighting, and the
    time per reweighting of the training steps and of each shadow's refresh."""
    opt = q3r.AdamQ3R(model.parameters(), lr=lr, targets=q3r.select_targets(model), target_rank=target,
                      lmbda=lmbda, period=period, svd="exact")
    banks = {name: OperatorBank(opt.targets, target, **kw) for name, kw in shadows.items()}
    devs = {name: [] for name in shadows}
    times = {name: [] for name in ["train", *shadows]}
    g = torch.Generator().manual_seed(seed)
    for step in range(reweightings * period):
        reweights = step % period == 0
        start = time.perf_counter()
        idx = torch.randint(0, len(X), (batch,), generator=g)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if reweights:                                   # the weights opt.step() reweights at
            for name, bank in banks.items():
                t = time.perf_counter()
                bank.refresh()
                times[name].append(time.perf_counter() - t)
            start = time.perf_counter()                 # the exact refresh in opt.step is not a cost of either
            opt.step()
        else:
            opt.step()
            times["train"].append(time.perf_counter() - start)
        if reweights:
            exact = torch.cat([gr.eps for gr in opt.banks[0].groups])
            for name, bank in banks.items():
                eps = torch.cat([gr.eps for gr in bank.groups])
                devs[name].append(((eps - exact).abs() / exact).max().item())
            n = len(devs[next(iter(devs))]) if devs else 0
            if progress and n % progress == 0:
                print(f"  ... {n} reweightings: " + " ".join(f"{k} {100 * max(d):.2f}%" for k, d in devs.items()),
                      file=sys.stderr, flush=True)
    return devs, banks, times


def cost_ratios(times: dict, period: int) -> tuple[list[float], list[float]]:
    """Per block of BLOCK reweightings: the default's refresh time over one warm iteration's, and
    the step-time ratio (period - 1 training steps, scaled to period, plus the refresh)."""
    refresh, step = [], []
    n = len(times["default"])
    for b in range(0, n - n % BLOCK or n, BLOCK):
        sl = slice(b, b + BLOCK)
        train = sum(times["train"][b * (period - 1):(b + BLOCK) * (period - 1)]) * period / (period - 1)
        d, o = sum(times["default"][sl]), sum(times["old"][sl])
        refresh.append(d / o)
        step.append((train + d) / (train + o))
    return refresh, step


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, nargs="+", default=[64], help="model widths (heads = width / 64)")
    p.add_argument("--corner", type=int, nargs="+", choices=range(len(CORNERS)),
                   help="corner indices (0-7, the table's order), default all")
    p.add_argument("--reweightings", type=int, default=200)
    p.add_argument("--shadows", nargs="+", default=["old", "default"], choices=list(SHADOWS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", type=int, default=0, help="print the worst deviation so far every N reweightings")
    p.add_argument("--smoke-test", action="store_true", help="one corner, 4 reweightings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    corners = [CORNERS[i] for i in args.corner] if args.corner else CORNERS
    if args.smoke_test:
        corners, args.reweightings = CORNERS[-1:], 4
    X, y = digits()
    shadows = {name: SHADOWS[name] for name in args.shadows}
    timed = {"old", "default"} <= set(shadows)
    print(f"max relative eps deviation from svd='exact' over {args.reweightings} reweightings (T = 5), "
          f"ViT 2 blocks on digits, seed {args.seed}, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'width':>5} {'lambda':>7} {'lr':>7} {'target':>7} " + " ".join(f"{n:>8}" for n in shadows)
          + "   default: refined / full SVD" + ("   default / one warm iteration: refresh, step" if timed else ""))
    worst = {name: 0.0 for name in shadows}
    for width in args.width:
        for lmbda, lr, target in corners:
            devs, banks, times = eps_deviation(vit(args.seed, width=width), X, y, lmbda, lr, target,
                                               args.reweightings, shadows, seed=args.seed,
                                               progress=args.progress)
            row = f"{width:>5} {lmbda:>7g} {lr:>7g} {target:>7g} " + " ".join(
                f"{100 * max(d):>7.2f}%" for d in devs.values())
            if "default" in banks:
                fits = banks["default"].fits
                total = fits["refresh"]
                row += f"   {100 * fits['refine'] / total:6.2f}% / {100 * fits['svd'] / total:5.2f}%"
            if timed:
                refresh, step = cost_ratios(times, 5)
                row += f"   {spread(refresh)}, {spread(step)}"
            print(row, flush=True)
            for name in shadows:
                worst[name] = max(worst[name], max(devs[name]))
    print(f"{'worst':>29} " + " ".join(f"{100 * w:>7.2f}%" for w in worst.values())
          + f"   (load {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()

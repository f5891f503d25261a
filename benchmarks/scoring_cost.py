"""Cost of scoring a trial at K retention levels relative to K plain evaluation passes.

Scoring = one batched SVD per targeted matrix (SpectralCache) + K evaluation passes with the
truncated weights swapped in place + restoring them. The ratio to K plain passes should stay
<= 1.2. Repetitions are interleaved in one process; the median ratio is printed per setup.

    python benchmarks/scoring_cost.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from q3r import select_targets
from tuning.trial.data import DatasetInfo, load_digits
from tuning.trial.evaluation import accuracy, score
from tuning.trial.models import build_vit

RETENTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 1.0)


def setups(n_val: int, smoke: bool = False):
    """(name, model, loader) of each setup; ``smoke``: the same setups with 1-block ViTs 32 wide."""
    small = {"depth": 1, "width": 32} if smoke else {}
    _, val, info = load_digits(0)
    yield ("digits ViT 1x32 (smoke)" if smoke else "digits ViT 4x64") + ", 360 val images", \
        build_vit(info, **{"depth": 4, "width": 64, **small}), DataLoader(val, batch_size=256)
    info32 = DatasetInfo("synthetic32", 32, 3, 10)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n_val, 3, 32, 32, generator=g), torch.randint(0, 10, (n_val,), generator=g))
    yield ("ViT 1x32 32px (smoke)" if smoke else "ViT-Tiny 32px") + f", {n_val} val images", \
        build_vit(info32, "tiny", **small), DataLoader(data, batch_size=256)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.reps, args.n_val = 1, 16
    device = torch.device("cpu")
    k = len(RETENTIONS)
    print(f"scoring time / {k} plain evaluation passes, CPU {torch.get_num_threads()} threads")
    for name, model, loader in setups(args.n_val, args.smoke_test):
        model.eval()
        targets = select_targets(model)
        ratios = []
        accuracy(model, loader, device)                               # warm-up
        for _ in range(args.reps):
            t0 = time.perf_counter()
            score(model, targets, loader, RETENTIONS, device)
            t1 = time.perf_counter()
            for _ in range(k):
                accuracy(model, loader, device)
            t2 = time.perf_counter()
            ratios.append((t1 - t0) / (t2 - t1))
        print(f"{name}: ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
              f"{args.reps} reps, {len(targets)} matrices)")


if __name__ == "__main__":
    main()

"""Training-step cost of AdamQ3R relative to AdamW on timm ViT-Tiny (32 px, patch 4).

q/k/v/proj/fc1/fc2 of every block are regularized (72 matrices), T = 5, p = 0.2. Both
optimizers train their own copy of the same model in one process; repetitions are
interleaved (A B B A ...) so that machine noise hits both alike, and each repetition runs
a multiple of T steps so it contains the same share of reweightings. Prints the median of
the per-repetition time ratios AdamQ3R / AdamW at each batch size, by elapsed (wall) time and
by the CPU time of this process, which other processes on a loaded machine disturb less.

    python benchmarks/optimizer_overhead.py                 # CPU, batch 8 and 64
    python benchmarks/optimizer_overhead.py --device cuda --batch 128
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import q3r


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, opt, x, y, steps: int, device, amp: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of ``steps`` training steps."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure(batch: int, device: torch.device, reps: int, steps: int, args) -> dict:
    base = make_model(0).to(device)
    models = {"adamw": base, "adamq3r": copy.deepcopy(base)}
    opts = {
        "adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=1e-3, weight_decay=0.0),
        "adamq3r": q3r.AdamQ3R(models["adamq3r"].parameters(), lr=1e-3, targets=q3r.select_targets(models["adamq3r"]),
                               target_rank=0.2, lmbda=0.1, period=5, svd=args.svd),
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for name in opts:                                   # warm-up: allocator, first fit, kernels
        time_steps(models[name], opts[name], x, y, 2 * steps, device, args.amp)
    times = {name: [] for name in opts}
    order = list(opts)
    for rep in range(reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            times[name].append(time_steps(models[name], opts[name], x, y, steps, device, args.amp))
    out = {"batch": batch, "reps": reps}
    for i, clock in enumerate(("wall", "cpu")):
        ratios = [q[i] / w[i] for q, w in zip(times["adamq3r"], times["adamw"])]
        out[clock] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="steps per repetition (a multiple of T=5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave torch's default)")
    p.add_argument("--svd", default="warm", choices=["warm", "exact"])
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU runs)")
    p.add_argument("--smoke-test", action="store_true", help="tiny run to check the script works")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.reps, args.steps, args.batch = 2, 5, [2]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"AdamQ3R / AdamW step time, ViT-Tiny 32px/patch 4, 72 matrices, T=5, p=0.2, svd={args.svd}, "
          f"{name}, torch {torch.__version__}{', bf16 autocast' if args.amp else ''}, q3r from {Path(q3r.__file__).parent}")
    for batch in args.batch:
        r = measure(batch, device, args.reps, args.steps, args)
        for clock in ("wall", "cpu"):
            med, lo, hi = r[clock]
            print(f"batch {r['batch']:4d}: ratio {med:.3f}  (min {lo:.3f}, max {hi:.3f}, {r['reps']} interleaved reps "
                  f"of {args.steps} steps, {clock} clock)", flush=True)


if __name__ == "__main__":
    main()

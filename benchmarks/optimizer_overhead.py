"""Training-step cost of AdamQ3R relative to AdamW on timm ViT-Tiny (32 px, patch 4).

q/k/v/proj/fc1/fc2 of every block are regularized (72 matrices), T = 5, p = 0.2. Both
optimizers train their own copy of the same model in one process; repetitions are
interleaved (A B B A ...) so that machine noise hits both alike, and each repetition runs
a multiple of T steps so it contains the same share of reweightings. Prints the median of
the per-repetition time ratios AdamQ3R / AdamW at each batch size, by elapsed (wall) time and
by the CPU time of this process, which other processes on a loaded machine disturb less, and
the FLOP floor: the ratio of the matmul FLOPs of T training steps (forward, backward, step;
counted by torch's FlopCounterMode, which leaves out QR, eigh and SVD, so a floor).

    python benchmarks/optimizer_overhead.py                 # CPU, batch 8 and 64
    python benchmarks/optimizer_overhead.py --device cuda --batch 128
    python benchmarks/optimizer_overhead.py --compare ../old-checkout   # its AdamQ3R in the same blocks
"""
from __future__ import annotations

import argparse
import copy
import statistics
import importlib.util
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import q3r


SMOKE_SIZE = {"depth": 1, "embed_dim": 32, "num_heads": 2}     # --smoke-test: the same code on a ViT this small


def make_model(seed: int, smoke: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10,
                             **(SMOKE_SIZE if smoke else {}))


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


def load_q3r(checkout: str):
    """The q3r package of another checkout (for example the commit before a change), as "q3r_compare"."""
    folder = Path(checkout).resolve() / "q3r"
    if not (folder / "__init__.py").is_file():
        raise SystemExit(f"--compare: no q3r package in {checkout!r} (looked for {folder / '__init__.py'})")
    spec = importlib.util.spec_from_file_location("q3r_compare", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["q3r_compare"] = module
    spec.loader.exec_module(module)
    return module


def adamq3r(lib, model, svd: str):
    return lib.AdamQ3R(model.parameters(), lr=1e-3, targets=lib.select_targets(model), target_rank=0.2, lmbda=0.1,
                       period=5, svd=svd)


def measure(batch: int, device: torch.device, reps: int, steps: int, args) -> dict:
    base = make_model(0, args.smoke_test).to(device)
    models = {"adamw": base, "adamq3r": copy.deepcopy(base)}
    opts = {"adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=1e-3, weight_decay=0.0),
            "adamq3r": adamq3r(q3r, models["adamq3r"], args.svd)}
    if args.compare:
        models["compare"] = copy.deepcopy(base)
        opts["compare"] = adamq3r(load_q3r(args.compare), models["compare"], args.svd)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for name in opts:                                   # warm-up: allocator, first fit, kernels
        time_steps(models[name], opts[name], x, y, 2 * steps, device, args.amp)
    flops = {}
    for name in opts:                                   # one period (T = 5 steps) each
        with FlopCounterMode(display=False) as counter:
            time_steps(models[name], opts[name], x, y, 5, device, args.amp)
        flops[name] = counter.get_total_flops()
    times = {name: [] for name in opts}
    order = list(opts)
    for rep in range(reps):
        for name in order if rep % 2 == 0 else order[::-1]:   # A B C, C B A, ...
            times[name].append(time_steps(models[name], opts[name], x, y, steps, device, args.amp))
    out = {"batch": batch, "reps": reps, "floor": flops["adamq3r"] / flops["adamw"]}
    for name in opts:
        if name == "adamw":
            continue
        for i, clock in enumerate(("wall", "cpu")):
            ratios = [q[i] / w[i] for q, w in zip(times[name], times["adamw"])]
            out[name, clock] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="steps per repetition (a multiple of T=5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave torch's default)")
    p.add_argument("--svd", default="warm", choices=["warm", "exact"])
    p.add_argument("--compare", metavar="DIR", help="a checkout whose AdamQ3R is timed in the same blocks")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU runs)")
    p.add_argument("--smoke-test", action="store_true", help="tiny run to check the script works")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.reps, args.steps, args.batch = 2, 5, [2]     # and a 1-block ViT 32 wide (SMOKE_SIZE)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"AdamQ3R / AdamW step time, ViT-Tiny 32px/patch 4, 72 matrices, T=5, p=0.2, svd={args.svd}, "
          f"{name}, torch {torch.__version__}{', bf16 autocast' if args.amp else ''}, q3r from {Path(q3r.__file__).parent}")
    for batch in args.batch:
        r = measure(batch, device, args.reps, args.steps, args)
        for (name, clock), (med, lo, hi) in ((k, v) for k, v in r.items() if isinstance(k, tuple)):
            label = "" if name == "adamq3r" else f", the AdamQ3R of {args.compare}"
            print(f"batch {r['batch']:4d}: ratio {med:.3f}  (min {lo:.3f}, max {hi:.3f}, {r['reps']} interleaved reps "
                  f"of {args.steps} steps, {clock} clock){label}", flush=True)
        print(f"batch {r['batch']:4d}: FLOP floor {r['floor']:.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Where AdamQ3R's extra time goes: CPU time of each part of a training step on ViT-Tiny.

AdamW and AdamQ3R (T = 5, p = 0.2, 72 matrices) train twin models, step by step alternately;
after a warm-up it prints the median CPU time of the forward+backward pass, of an AdamW step,
of an AdamQ3R step that reweights (t mod T = 0) and of one that only applies R, then the
extra time per step split into the reweighting (amortised over T) and the apply, and the
bank's fit counts. CPU time of this process is used, as other processes disturb it less.

    python benchmarks/step_breakdown.py --batch 8 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import q3r
from optimizer_overhead import adamq3r, make_model   # benchmarks/ is on sys.path when run as a script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=60, help="steps per optimizer; the first 20 are a warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--smoke-test", action="store_true", help="tiny run to check the script works")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = 20
    if args.smoke_test:                         # a 1-block ViT; steps 0-5 hold both kinds of AdamQ3R step
        args.batch, args.steps, warmup = 2, 6, 0
    base = make_model(0, args.smoke_test)
    twin = copy.deepcopy(base)
    opt_q = adamq3r(q3r, twin, "warm")
    opt_w = torch.optim.AdamW(base.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    parts = {"forward+backward": [], "adamw step": [], "adamq3r step, reweighting": [], "adamq3r step, apply only": []}
    for t in range(args.steps):
        for name, model, opt in (("adamw", base, opt_w), ("adamq3r", twin, opt_q)):
            start = time.process_time()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            mid = time.process_time()
            opt.step()
            end = time.process_time()
            if t < warmup:
                continue
            if name == "adamw":
                parts["forward+backward"].append(mid - start)
                parts["adamw step"].append(end - mid)
            else:
                parts["adamq3r step, reweighting" if t % 5 == 0 else "adamq3r step, apply only"].append(end - mid)
    ms = {k: 1000 * statistics.median(v) for k, v in parts.items()}
    print(f"ViT-Tiny, batch {args.batch}, CPU {torch.get_num_threads()} threads, q3r from {Path(q3r.__file__).parent}; "
          f"median CPU ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    q = (4 * ms["adamq3r step, apply only"] + ms["adamq3r step, reweighting"]) / 5
    fb, w = ms["forward+backward"], ms["adamw step"]
    print(f"step ratio {(fb + q) / (fb + w):.3f}; extra per step {q - w:.1f} ms: reweighting (amortised) "
          f"{(ms['adamq3r step, reweighting'] - ms['adamq3r step, apply only']) / 5:.1f}, "
          f"apply {ms['adamq3r step, apply only'] - w:.1f}; fits {dict(opt_q.banks[0].fits)}")


if __name__ == "__main__":
    main()

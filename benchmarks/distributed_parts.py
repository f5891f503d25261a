"""Where each rank's time goes in a shared-out reweighting (``distributed="share"``), at 2 workers.

The same model, training and banks as ``benchmarks/distributed.py`` (timm ViT-Tiny, 32 px, patch 4,
72 matrices, p = 0.2, gloo on CPU, one thread per rank). Each rank times, per reweighting, its local
refresh by shape group, the matrices it refined (laggards: extra iterations for a sigma_{r+1} that had
not converged), the exchange (CPU of the whole process, and of the calling thread alone: the rest is
gloo's threads), and a plain reweighting of all 72 matrices in the same run. ``--swap`` gives each
rank the other's parts, to tell whether a difference between the ranks follows the matrices or the
process. Prints per-rank means over the repetitions, CPU ms, and the ratio against the plain one.

    python benchmarks/distributed_parts.py --reps 14
    python benchmarks/distributed_parts.py --reps 14 --swap
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import q3r  # noqa: E402
import q3r.bank  # noqa: E402
from benchmarks.distributed import make_model, threads  # noqa: E402

SPENT: dict = {}


def timed(module, name: str) -> None:
    """Adds the process and calling-thread CPU time of ``module.name`` to SPENT."""
    f = getattr(module, name)

    def wrapper(*a, **kw):
        start = time.process_time(), time.thread_time()
        out = f(*a, **kw)
        SPENT[name] = SPENT.get(name, 0.0) + time.process_time() - start[0]
        SPENT[name + " (calling thread)"] = SPENT.get(name + " (calling thread)", 0.0) + time.thread_time() - start[1]
        return out
    setattr(module, name, wrapper)


def rank_main(rank: int, world: int, rendezvous: str, out: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    timed(q3r.bank, "exchange")
    model = make_model(args.smoke_test)
    targets = q3r.select_targets(model)
    opt = q3r.AdamQ3R(model.parameters(), lr=1e-3, targets=targets, target_rank=0.2, lmbda=0.1,
                      period=10 ** 9, distributed="share")
    ddp = DDP(model)
    bank, plain = q3r.OperatorBank(targets, 0.2, distributed="share"), q3r.OperatorBank(targets, 0.2)
    if args.swap:
        bank.owners = [world - 1 - o for o in bank.owners]
    refresh_group = bank._refresh_group

    def by_group(g):
        start, refined = time.process_time(), bank.fits["refine"]
        refresh_group(g)
        key = f"{len(g.targets)} x {g.targets[0].shape[0]}x{g.targets[0].shape[1]}"
        SPENT[key] = SPENT.get(key, 0.0) + time.process_time() - start
        SPENT["refined"] = SPENT.get("refined", 0) + bank.fits["refine"] - refined
    bank._refresh_group = by_group
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch // world, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch // world,), generator=g)

    def train_step():
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()
    bank.refresh(), plain.refresh()                              # first fits: full SVDs, not timed
    rows = []
    for _ in range(args.reps):
        dist.barrier()
        start = time.process_time()
        plain.refresh()
        spent_plain = time.process_time() - start
        dist.barrier()
        SPENT.clear()
        start = time.process_time()
        bank.refresh()
        rows.append(dict(SPENT, total=time.process_time() - start, plain=spent_plain))
        train_step()
    keys = sorted({k for r in rows for k in r})
    result = {k: statistics.mean(r.get(k, 0.0) for r in rows) for k in keys}
    result["parts"] = [len(g.targets) for g, o in zip(bank.groups, bank.owners) if o == rank]
    result["threads"] = threads()
    dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=14, help="timed reweightings, a training step between")
    parser.add_argument("--batch", type=int, default=32, help="global batch, split over the ranks")
    parser.add_argument("--swap", action="store_true", help="each rank refreshes the other's parts")
    parser.add_argument("--smoke-test", action="store_true", help="a 2-block, 32-wide ViT, 2 reps")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.reps, args.batch = 2, 4
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(rank_main, args=(2, os.path.join(tmp, "rendezvous"), tmp, args), nprocs=2,
                           start_method="fork")
        ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(2)]
    print(f"2 workers, gloo, 1 thread per rank, {'parts swapped, ' if args.swap else ''}means of {args.reps} "
          f"reweightings, CPU ms (ratio against the plain reweighting in the same run)")
    for r, d in enumerate(ranks):
        groups = " | ".join(f"{k} {v * 1e3:.1f}" for k, v in d.items() if " x " in k)
        print(f"r{r}: total {d['total'] * 1e3:.1f} ({d['total'] / d['plain']:.3f}), plain {d['plain'] * 1e3:.1f}; "
              f"local by group: {groups}; matrices refined per reweighting {d.get('refined', 0):.1f}; exchange "
              f"{d.get('exchange', 0) * 1e3:.1f} (calling thread {d.get('exchange (calling thread)', 0) * 1e3:.1f}); "
              f"parts {d['parts']}; threads {'/'.join(map(str, d['threads']))}")


if __name__ == "__main__":
    main()

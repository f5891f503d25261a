"""Reweighting and training-step time per rank at 1, 2 and 4 data-parallel workers.

timm ViT-Tiny (32 px, patch 4: 72 regularized matrices, p = 0.2) under DistributedDataParallel:
gloo on CPU, NCCL when there is a GPU per rank. Each rank times, interleaved, a reweighting of
two operator banks over the same weights, one per strategy (``OperatorBank(distributed=...)``:
"share", each rank refreshes its part of every group then sends it to the others; "broadcast",
rank 0 refreshes then broadcast; at one worker both are the plain bank), and a training step of AdamQ3R
(distributed="share") at the same global batch split over the ranks. Between repetitions the
weights move by that step, so every reweighting after the first is a warm one, as in training.
The banks stack the weights (pack=False, the same for both). Each rank also times, interleaved
with them, a plain bank's reweighting of all the matrices (one worker's work), so the ratio can
be read against the run with one worker and against that plain reweighting timed under the same
load at the same moment. Prints each rank's median time, elapsed and CPU (this process's), the
ratios, the CPU time of the exchange, and the plain reweighting's CPU time by shape group; a
"round" runs every number of workers once, and rounds alternate so that machine load hits them
alike.

    python benchmarks/distributed.py                         # 1, 2, 4 workers, 1 thread per rank
    python benchmarks/distributed.py --workers 1 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import q3r
import q3r.bank

STRATEGIES = ("share", "broadcast")
KEYS = ("plain", *STRATEGIES, "train")
SPENT = {"wall": 0.0, "cpu": 0.0}                  # time in the exchange after a refresh (this rank)
BY_GROUP: dict = {}                                # the plain bank's CPU time per shape group (this refresh)


def timed_exchange(exchange):
    def wrapper(*a, **kw):
        start = time.perf_counter(), time.process_time()
        exchange(*a, **kw)
        SPENT["wall"] += time.perf_counter() - start[0]
        SPENT["cpu"] += time.process_time() - start[1]
    return wrapper


def timed_groups(bank):
    refresh_group = bank._refresh_group

    def wrapper(g):
        start = time.process_time()
        refresh_group(g)
        key = f"{len(g.targets)} x {g.targets[0].shape[0]}x{g.targets[0].shape[1]}"
        BY_GROUP[key] = BY_GROUP.get(key, 0.0) + time.process_time() - start
    bank._refresh_group = wrapper


def make_model(smoke: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    size = dict(depth=2, embed_dim=32, num_heads=2) if smoke else {}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10,
                             **size)


def clock(device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def rank_main(rank: int, world: int, rendezvous: str, out: str, args) -> None:
    torch.set_num_threads(args.threads)
    q3r.bank.exchange = timed_exchange(q3r.bank.exchange)
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world and not args.cpu
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        times = measure(rank, world, device, args) | {"threads": threads()}    # with gloo's threads still up
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(device) if cuda else "cpu",
                   "backend": "nccl" if cuda else "gloo", **times}, f)


def threads() -> list[int]:
    """This process's torch intra-op and inter-op threads, and its OS threads (gloo's included)."""
    tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    return [torch.get_num_threads(), torch.get_num_interop_threads(), tasks]


def measure(rank: int, world: int, device: torch.device, args) -> dict:
    model = make_model(args.smoke_test).to(device)
    targets = q3r.select_targets(model)
    opt = q3r.AdamQ3R(model.parameters(), lr=1e-3, targets=targets, target_rank=0.2, lmbda=0.1,
                      period=10 ** 9, distributed="share")   # reweights at its first step only: timed apart
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    banks = {s: q3r.OperatorBank(targets, 0.2, distributed=s) for s in STRATEGIES}
    banks["plain"] = q3r.OperatorBank(targets, 0.2)          # one worker's whole reweighting, in the same run
    timed_groups(banks["plain"])
    g = torch.Generator().manual_seed(rank)
    per_rank = args.batch // world
    x = torch.randn(per_rank, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (per_rank,), generator=g).to(device)

    def train_step():
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()                                              # first fits (full SVDs), then warm ones
    for bank in banks.values():
        bank.refresh()
    times, by_group = {k: [] for k in KEYS}, []
    for _ in range(args.reps):
        for name in KEYS:
            dist.barrier()
            SPENT.update(wall=0.0, cpu=0.0)
            BY_GROUP.clear()
            start = clock(device)
            banks[name].refresh() if name in banks else train_step()
            stop = clock(device)
            times[name].append((stop[0] - start[0], stop[1] - start[1], SPENT["wall"], SPENT["cpu"]))
            by_group += [dict(BY_GROUP)] if name == "plain" else []
    keys = ("wall", "cpu", "exchange_wall", "exchange_cpu")
    return {k: {m: statistics.median(t[i] for t in v) for i, m in enumerate(keys)} for k, v in times.items()} | {
        "fits": {s: dict(b.fits) for s, b in banks.items()}, "parts": {s: len(b.groups) for s, b in banks.items()},
        "by_group": {k: statistics.median(d[k] for d in by_group) for k in by_group[0]}}


def run(world: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(rank_main, args=(world, os.path.join(tmp, "rendezvous"), tmp, args), nprocs=world,
                           start_method="fork")
        ranks = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
        return ranks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2, help="runs of every number of workers, alternated")
    parser.add_argument("--reps", type=int, default=6, help="timed repetitions per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch, split over the ranks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU even where there are GPUs")
    parser.add_argument("--smoke-test", action="store_true",
                        help="a 2-block, 32-wide ViT, 1 round of 2 reps, 1 and 2 workers")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.workers, args.rounds, args.reps, args.batch = [1, 2], 1, 2, 4
    if 1 not in args.workers:
        parser.error(f"--workers must include 1 (the ratios are against one worker), but got {args.workers}")
    if any(args.batch % w for w in args.workers):
        parser.error(f"--batch {args.batch} must divide by every number of workers {args.workers}")
    results: dict[int, list[list[dict]]] = {w: [] for w in args.workers}
    for _ in range(args.rounds):
        for w in args.workers:
            results[w].append(run(w, args))
    report(results, args)


def median_over_rounds(rounds: list[list[dict]], rank: int, key: str, what: str) -> float:
    return statistics.median(r[rank][key][what] for r in rounds)


def report(results: dict, args) -> None:
    first = results[1][0][0]
    print(f"device: {first['device']} ({first['backend']}), {args.threads} thread(s) per rank, global batch "
          f"{args.batch}, {args.rounds} round(s) of {args.reps} reps; medians, ms wall/cpu (ratio against the run "
          f"with 1 worker, wall/cpu) [ratio against the plain reweighting in the same run, cpu]")
    print("threads per rank (torch intra-op, inter-op, OS threads with the process group up): " + "; ".join(
        f"{w} worker(s) " + ", ".join("/".join(map(str, rank["threads"])) for rank in rounds[0])
        for w, rounds in results.items()))
    base = {k: {m: median_over_rounds(results[1], 0, k, m) for m in ("wall", "cpu")} for k in KEYS}
    summary = []
    for w, rounds in results.items():
        for key in KEYS:
            if w == 1 and key in STRATEGIES:                   # at one worker these are the plain bank
                continue
            ref = base["train" if key == "train" else "plain"]
            cells, worst, worst_same = [], {"wall": 0.0, "cpu": 0.0}, 0.0
            for r in range(w):
                wall, cpu = (median_over_rounds(rounds, r, key, m) for m in ("wall", "cpu"))
                cell = f"r{r} {wall * 1e3:.1f}/{cpu * 1e3:.1f} ({wall / ref['wall']:.2f}/{cpu / ref['cpu']:.2f})"
                if key in STRATEGIES:
                    same = cpu / median_over_rounds(rounds, r, "plain", "cpu")
                    cell += f" [{same:.2f}]"
                    worst_same = max(worst_same, same)
                cells.append(cell)
                worst = {"wall": max(worst["wall"], wall / ref["wall"]), "cpu": max(worst["cpu"], cpu / ref["cpu"])}
            label = {"plain": "reweight, plain", "train": "train step"}.get(key, "reweight " + key)
            extra = ""
            if key in STRATEGIES:
                ex = [median_over_rounds(rounds, r, key, "exchange_cpu") * 1e3 for r in range(w)]
                extra = f" | {rounds[0][0]['parts'][key]} parts, exchange cpu " + "/".join(f"{e:.1f}" for e in ex)
                summary.append(f"{w} workers {key}: slowest rank {worst['wall']:.2f} wall / {worst['cpu']:.2f} cpu "
                               f"against 1 worker, {worst_same:.2f} cpu against the plain reweighting in the same run")
            print(f"{w} worker(s) {label:<20} {' | '.join(cells)}{extra}")
    for line in summary:
        print("per-rank reweighting ratio, " + line)
    groups = {k: statistics.median(r[0]["by_group"][k] for r in results[1]) for k in first["by_group"]}
    print("1 worker, plain reweighting by shape group, cpu ms (matrices x shape): "
          + " | ".join(f"{k} {v * 1e3:.1f}" for k, v in groups.items()))


if __name__ == "__main__":
    main()

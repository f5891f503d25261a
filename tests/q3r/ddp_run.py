"""Runs of a tiny model under DistributedDataParallel (gloo, CPU), for test_distributed.py.

``launch(fn, world, *args)`` forks ``world`` processes that join one gloo group through a file
(no port), run ``fn(rank, world, *args)`` and leave it; each writes what it found with torch.save,
and the test compares the files. Fork, not spawn: the children need not import torch again (about
20 s on a busy machine); the test process runs torch single-threaded, which makes forking safe.
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.penalty import Q3RPenalty
from q3r.targets import select_targets

GLOBAL_BATCH, STEPS, PERIOD = 16, 9, 2          # reweightings at steps 0, 2, 4, 6, 8
Q3R = dict(target_rank=0.3, period=PERIOD)


class Block(nn.Module):
    """A fused qkv (3d x d: three d x d targets), a proj (d x d) and an MLP (3d x d, d x 3d)."""

    def __init__(self, d):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 3 * d), nn.Linear(3 * d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + self.proj(torch.tanh(q) * torch.sigmoid(k) + v)
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, d=8, depth=3):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def make(seed=0) -> Net:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Net().double()


def batch(t: int, rank: int = 0, world: int = 1):
    """This rank's share of step t's global batch."""
    g = torch.Generator().manual_seed(100 + t)
    x, y = torch.randn(GLOBAL_BATCH, 8, generator=g).double(), torch.randn(GLOBAL_BATCH, 3, generator=g).double()
    n = GLOBAL_BATCH // world
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def build(technique: str, model: nn.Module, distributed=None, **kw):
    """(optimizer, penalty or None) for "adamq3r" or "adam_q3r_loss" (Adam on loss + lmbda * Q3R)."""
    targets = select_targets(model)
    if technique == "adamq3r":
        return AdamQ3R(model.parameters(), lr=3e-2, lmbda=0.5, targets=targets, distributed=distributed,
                       **Q3R, **kw), None
    return torch.optim.Adam(model.parameters(), lr=3e-2), Q3RPenalty(targets, distributed=distributed, **Q3R, **kw)


def train(model, opt, penalty, steps, rank=0, world=1, start=0) -> list[float]:
    losses = []
    for t in range(start, start + steps):
        x, y = batch(t, rank, world)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        total = loss + 0.5 * penalty() if penalty is not None else loss
        total.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def banks(opt, penalty):
    return [penalty.bank] if penalty is not None else opt.banks


PRELOAD = ["torch", __name__, "tuning.trial.recipe", "tuning.trial.parallel", "tests.q3r.test_distributed",
           "tests.trial.test_parallel"]                  # what the processes of every launch import


_FORK_SERVER_OF = None          # the pid of the process that started multiprocessing's fork server


def _own_fork_server() -> None:
    """multiprocessing's fork server is one per process, kept in a module global; a process forked from the one
    that started it (a mutmut worker: `make mutants`, tests/MUTANTS.md) inherits that global but cannot
    ``waitpid`` a server that is not its child, so its next launch fails with ChildProcessError whatever the
    code under test. There the inherited server is forgotten (private attributes of CPython's
    ``multiprocessing.forkserver``; the parent keeps its server) and the launch starts one of this process."""
    global _FORK_SERVER_OF
    from multiprocessing import forkserver
    server = forkserver._forkserver
    if _FORK_SERVER_OF not in (None, os.getpid()) and server._forkserver_pid is not None:
        os.close(server._forkserver_alive_fd)          # this process's copy; the parent's keeps its server alive
        server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
    _FORK_SERVER_OF = os.getpid()


def launch(fn, world: int, *args) -> None:
    """``fn(rank, world, *args)`` in ``world`` processes joined in a gloo group. The processes are forked from a
    fork server that has imported ``fn``'s module and torch, but never run autograd (a fork of this process is
    refused once autograd has run in it, as it has under pytest-xdist; spawning imports torch again per process)."""
    _own_fork_server()
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD + [fn.__module__])    # read once, at its start
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_join, args=(fn, world, os.path.join(tmp, "rendezvous"), args), nprocs=world,
                           start_method="forkserver")


def _join(rank, fn, world, rendezvous, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()

"""Data parallelism for a trial, read from ``torch.distributed`` alone: whoever started the processes
(Ray Train in a sweep, torchrun, a test's forked ranks) has initialized the process group.

Without an initialized group, or with one rank, every function here is the identity: a one-worker
trial runs exactly as before. With N ranks a trial wraps its model in DistributedDataParallel after
the technique is set up (the Q3R techniques then share their reweighting out, ``q3r.distributed``),
splits each global batch over the ranks (``RankBatches``: together the ranks take the batches a
single worker would), scores on rank 0 only and hands the result to every rank, and writes its
checkpoint from rank 0.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

SHARE = "share"            # q3r.distributed's strategy for the Q3R techniques' operator banks


def active() -> bool:
    """Whether this process is one of several ranks of an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_device(kind: str) -> torch.device:
    """The device of this rank: for CUDA the one its launcher selected (``torch.cuda.set_device``)."""
    if kind == "cuda" and active():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel when there are several ranks, else ``model``. The
    ranks start from rank 0's weights (DDP broadcasts them), so every replica is the same."""
    if not active():
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("data-parallel training needs a trainable parameter, but the model has none")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles epoch ``epoch`` (1, 2, ...) of a trial seeded ``seed``."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch - 1)


class RankBatches(Sampler):
    """This rank's part of every global batch, as a ``batch_sampler``: the global batches are those of
    ``DataLoader(dataset, batch_size, shuffle=True, generator=epoch_generator(seed, epoch))`` (what one
    worker trains on), each cut into ``world`` near-equal parts (a last batch smaller than ``world``
    lends its examples round: no rank gets an empty batch). Call ``set_epoch`` every epoch, as for a
    ``DistributedSampler``; with one worker the batches are the one-worker loader's."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank_: Optional[int] = None,
                 world: Optional[int] = None):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, but got {batch_size=}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_generator(self.seed, self.epoch) if self.shuffle else None
        for batch in DataLoader(range(self.n), batch_size=self.batch_size, shuffle=self.shuffle, generator=order):
            part = batch.tensor_split(self.world)[self.rank] if len(batch) >= self.world else \
                batch[self.rank % len(batch)].reshape(1)
            yield part.tolist()


def mean(value: Optional[float], device: torch.device) -> Optional[float]:
    """The mean of ``value`` over the ranks (every rank passes its own; None stays None)."""
    if value is None or not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def from_main(obj):
    """Rank 0's ``obj``, on every rank."""
    if not active():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()

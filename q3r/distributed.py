"""The reweighting under data parallelism (torch.distributed): every rank ends with the same operators.

Under DistributedDataParallel the Q3R step of ``AdamQ3R`` is applied outside the gradient
all-reduce, so every rank must apply exactly the same operator, or the replicas drift apart;
the penalty's operator (``Q3RPenalty``) must be the same too, or the averaged gradient mixes
different operators. An ``OperatorBank(..., distributed=...)`` makes sure of it, two ways:

- ``"share"``: every shape group is cut into one run of whole parameters per rank (a fused qkv
  stays in one part), so each rank refreshes the same share of every shape (``plan``), and one
  message from each rank to every other gives every rank every part's operators. The
  reweighting cost per rank falls with the number of ranks.
- ``"broadcast"``: rank 0 refreshes every group, the others receive the result (one broadcast).

Either way the state that decides control flow (widths, the leading columns applied, the members
with no operator yet, an accelerator's answers for the next reweighting) travels at the head of
the operators' message, and the refit counts are summed over the ranks, so the banks stay
identical, state_dict included. A part is a group of its own: it sets its width from its own members, so with the
warm start a run on N ranks can differ from a one-rank run by the warm start's accuracy where the
widths differ (``svd="exact"`` agrees to rounding). Without an initialized process group (or with
one rank) a bank behaves exactly as without ``distributed``. ``docs/distributed.md`` gives the
measurements that chose ``"share"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .group import read_later

STRATEGIES = ("share", "broadcast")
DEFAULT = "share"                           # what distributed=True means: chosen by measurement (docs/distributed.md)
FITS = ("refresh", "refine", "svd")
_META = 4                                   # width, columns, k_apply, has answers; then a fresh flag per member
PER_MATRIX = 500_000                        # a refresh's fixed cost per matrix, in units of d1 d2 k (see ``cost``)
_ALIGN = 8                                  # bytes: every group's payload starts where any float can be viewed


@dataclass(frozen=True)
class Workers:
    """The ranks that share a bank's reweighting: ``rank`` of ``world`` in ``group``."""

    strategy: str
    rank: int
    world: int
    group: Any = None                       # a ProcessGroup, None for the default one

    def global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


def workers(strategy, process_group=None) -> Optional[Workers]:
    """The ranks for ``strategy`` ("share", "broadcast", True: the default, "share"; None or False:
    each rank on its own), read from torch.distributed; None where there is nothing to share (no
    process group, or one rank)."""
    if strategy is None or strategy is False:
        return None
    if strategy is True:
        strategy = DEFAULT
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed must be one of {STRATEGIES}, True or None, but got distributed={strategy!r}")
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(process_group)
    if world == 1:
        return None
    return Workers(strategy, dist.get_rank(process_group), world, process_group)


def plan(groups: Sequence[tuple[list, int]], world: int) -> list[tuple[int, list, int]]:
    """The parts of the shape groups ``(targets, width)``, as (group index, targets, rank).

    Every group of at least ``world`` parameters is cut into ``world`` runs of whole parameters
    (a fused qkv stays together) with about the same number of matrices, one per rank: each rank
    refreshes the same share of every shape, so the ranks stay balanced whatever a shape costs
    against another (measured: the cost of a 192 x 192 matrix against a 768 x 192 one moved with
    the machine's load, and a cut by a cost model left one rank 0.1-0.15 of a worker's time behind,
    against the one more batched call per rank this costs). The smaller groups are laid end to end
    and cut by ``cost`` (McNaughton's wrap-around rule: a parameter goes to the rank where its
    midpoint falls). Every rank computes the same answer.
    """
    parts: dict[tuple[int, int], list] = {}

    def deal(units):                                           # (group index, one parameter's targets, cost)
        total, done = sum(c for _, _, c in units), 0.0
        for gi, ts, weight in units:
            rank = min(world - 1, int((done + weight / 2) * world // total))
            parts.setdefault((gi, rank), []).extend(ts)
            done += weight

    small = []
    for gi, (members, width) in enumerate(groups):
        by_param: dict[int, list] = {}
        for t in members:
            by_param.setdefault(id(t.param), []).append(t)
        units = [(gi, ts, cost(ts, width)) for ts in by_param.values()]
        if len(units) >= world:
            deal(units)
        else:
            small += units
    if small:
        deal(small)
    order = {id(t): i for members, _ in groups for i, t in enumerate(members)}
    return [(gi, sorted(ts, key=lambda t: order[id(t)]), rank) for (gi, rank), ts in sorted(parts.items())]


def cost(targets: Sequence, width: int) -> float:
    """A warm refresh's cost of same-shape targets: d1 d2 k per matrix for the products, plus
    ``PER_MATRIX`` for what does not shrink with the matrix (QR and eigh are one LAPACK call per
    matrix). Measured on CPU, ViT-Tiny: 48 matrices 192 x 192 at k = 28 took 1.0-1.6 times as
    long as 12 of 768 x 192 at k = 39 (one thread; 1.0-1.2 alone, 1.4-1.6 in the benchmark under
    load), which d1 d2 k alone puts at 0.72. Used only to deal out the groups too small to cut (``plan``)."""
    d1, d2 = targets[0].shape
    return len(targets) * (d1 * d2 * width + PER_MATRIX)


def check_same(targets: Sequence, w: Workers) -> None:
    """Every rank must hold the same targets in the same order, or the parts would not line up."""
    sig = [len(targets), sum((i + 1) * (7 * t.shape[0] + 13 * t.shape[1]) for i, t in enumerate(targets))]
    device = targets[0].param.device if targets else torch.device("cpu")
    lo = torch.tensor(sig, dtype=torch.int64, device=device)
    hi = lo.clone()
    dist.all_reduce(lo, dist.ReduceOp.MIN, group=w.group)
    dist.all_reduce(hi, dist.ReduceOp.MAX, group=w.group)
    if not torch.equal(lo, hi):
        raise ValueError(f"the ranks disagree on the Q3R targets (count, shape signature): "
                         f"between {lo.tolist()} and {hi.tolist()}; build the same model on every rank")


# ---- the exchange after a refresh ---------------------------------------------------------------
def room(groups) -> list[int]:
    """The bytes each group will most likely send after the next refresh (its columns now, or its
    width if wider, and room for an accelerator's answers): every rank computes them before the
    refresh, from the same state, so that one message sized in advance carries the host values too."""
    return [_nbytes(g, max(g.width, 0 if g.U is None else g.U.shape[-1]), True) for g in groups]


@dataclass
class Message:
    """The exchange's layout, fixed before the refresh (every rank computes the same), and on gloo
    the receives of the other ranks' messages, posted then."""

    senders: list[int]
    src: Optional[int]                      # the one sender (a broadcast), or None: every rank sends
    owned: dict[int, list[int]]
    heads: dict[int, int]                   # bytes of each sender's host values
    space: dict[int, int]                   # bytes of each sender's groups, as sized
    length: int
    posted: Optional[tuple] = None          # (receive buffer, its requests) on gloo


def expect(bank) -> Message:
    """The message of the next exchange, sized before the refresh; on gloo the receives are posted
    at once, so that a message arriving while this rank still refreshes lands in place (measured:
    gloo otherwise holds an early message and copies it over when the receive comes, about 1.5 ms
    of CPU for 3 MB on the rank that finishes last)."""
    w: Workers = bank.workers
    groups, owners, rooms = bank.groups, bank.owners, room(bank.groups)
    senders = sorted(set(owners))
    src = senders[0] if len(senders) == 1 else None
    senders = senders if src is not None else list(range(w.world))
    owned = {r: [i for i, o in enumerate(owners) if o == r] for r in senders}
    heads = {r: 8 * (1 + len(FITS) + sum(_META + len(groups[i].targets) for i in owned[r])) for r in senders}
    space = {r: sum(rooms[i] for i in owned[r]) for r in senders}
    length = max(heads[r] + space[r] for r in senders)
    m = Message(senders, src, owned, heads, space, length)
    if src is None and dist.get_backend(w.group) == "gloo":
        out = groups[0].eps.new_empty(w.world, length, dtype=torch.uint8)
        m.posted = (out, [dist.irecv(out[r], w.global_rank(r), w.group) for r in range(w.world) if r != w.rank])
    return m


def exchange(bank, fits_before: dict, m: Message) -> None:
    """Give every rank every group's state from the rank that refreshed it, and sum the refit counts.

    One message per rank (one broadcast when one rank refreshed every group): its host values
    (payload size, refit counts, each group's width, columns, ...), then its groups' tensors, in
    the room sized before the refresh (``expect``). Only when a group came back wider than its room
    (a refit at a larger width, a first fit) does a second, exactly sized message follow."""
    w: Workers = bank.workers
    groups = bank.groups
    senders, src, owned, heads, space, length = m.senders, m.src, m.owned, m.heads, m.space, m.length
    mine = owned.get(w.rank, [])
    sizes = {i: _nbytes(groups[i], groups[i].U.shape[-1], groups[i].answers is not None) for i in mine}
    head = [sum(sizes.values())] + [bank.fits[k] - fits_before[k] for k in FITS]
    for i in mine:
        head += _meta(groups[i])
    send = groups[0].eps.new_empty(length, dtype=torch.uint8)
    if w.rank in heads:
        send[: heads[w.rank]].view(torch.int64).copy_(torch.tensor(head))
        if head[0] <= space[w.rank]:
            _write(groups, mine, sizes, send[heads[w.rank]:])
    chunks = _gather(send, length, w, src, m.posted)
    hosts = {r: head if r == w.rank else chunks[r][: heads[r]].view(torch.int64).tolist() for r in senders}
    at = dict(heads)
    own = send[heads.get(w.rank, 0):]
    if any(hosts[r][0] > space[r] for r in senders):            # a group outgrew its room: once more, exactly
        length = max(hosts[r][0] for r in senders)
        send = own = send.new_empty(length)
        _write(groups, mine, sizes, send)
        chunks, at = _gather(send, length, w, src), dict.fromkeys(senders, 0)
    at[w.rank] = 0
    for j, k in enumerate(FITS):
        bank.fits[k] = fits_before[k] + sum(hosts[r][1 + j] for r in senders)
    for r in senders:                      # this rank's own groups too, from the bytes it sent: every rank then
        data = own if r == w.rank else chunks[r]   # holds each operator in the same layout, so the same
        values = hosts[r][1 + len(FITS):]          # matmuls round alike and the replicas stay bitwise equal
        for i in owned[r]:
            n = _META + len(groups[i].targets)
            meta, values = values[:n], values[n:]
            size = _nbytes(groups[i], meta[1], bool(meta[3]))
            _adopt(groups[i], meta, data[at[r]: at[r] + size])
            at[r] += size


def _meta(g) -> list[int]:
    fresh = set(g.fresh)
    return [g.width, g.U.shape[-1], g.k_apply, int(g.answers is not None)] + [int(i in fresh) for i in range(len(g.targets))]


def _parts(g, cols: int, answers: bool) -> list[tuple[int, ...]]:
    """The shapes sent for group g: U, V, sigma, s, eps, eps_first (and r_env max, unconverged, infinite)."""
    n, (d1, d2) = len(g.targets), g.targets[0].shape
    shapes = [(n, d1, cols), (n, d2, cols), (n, cols), (n, cols), (n,), (n,)]
    return shapes + ([(), (n,), (n,)] if answers else [])


def _nbytes(g, cols: int, answers: bool) -> int:
    n = sum(math.prod(s) for s in _parts(g, cols, answers)) * g.eps.element_size()
    return -(-n // _ALIGN) * _ALIGN


def _write(groups, mine: list[int], sizes: dict, buf: Tensor) -> None:
    """The operator state of this rank's groups into ``buf`` (bytes), one after another: each tensor copied once."""
    at = 0
    for i in mine:
        g = groups[i]
        tensors = [g.U, g.V, g.sigma, g.s, g.eps, g.eps_first]
        if g.answers is not None:
            tensors += [a.to(g.eps.dtype) for a in g.answers]
        flat, k = buf[at: at + sizes[i]].view(g.eps.dtype), 0
        for t in tensors:
            flat[k: k + t.numel()].view(t.shape).copy_(t)
            k += t.numel()
        at += sizes[i]


def _gather(send: Tensor, length: int, w: Workers, src: Optional[int], posted: Optional[tuple] = None
            ) -> dict[int, Tensor]:
    """Each sending rank's ``length`` bytes on every rank: a broadcast from ``src``, else from every
    rank to every other. On gloo these are pairwise sends (into the receives ``posted`` before the
    refresh, if given): measured on CPU, they cost each rank less than half the CPU time of gloo's
    all-gather (1.9 against 4.8 ms for 3 MB, two ranks)."""
    if src is not None:                                        # every rank's ``send`` is ``length`` bytes: received in place
        dist.broadcast(send, src=w.global_rank(src), group=w.group)
        return {src: send}
    if dist.get_backend(w.group) == "gloo":
        others = [r for r in range(w.world) if r != w.rank]
        if posted is None:
            out = send.new_empty(w.world, length)
            receives = [dist.irecv(out[r], w.global_rank(r), w.group) for r in others]
        else:
            out, receives = posted
        for request in [dist.isend(send, w.global_rank(r), w.group) for r in others] + receives:
            request.wait()
    else:
        out = send.new_empty(w.world, length)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out.view(-1), send, group=w.group)
    return dict(enumerate(out.unbind(0)))


def _adopt(g, head, data: Tensor) -> None:
    """Set group g from the owner's bytes and host values."""
    width, cols, k_apply, answers = head[:_META]
    values, at = [], 0
    flat = data.view(g.eps.dtype)
    for shape in _parts(g, cols, bool(answers)):
        n = math.prod(shape)
        values.append(flat[at: at + n].view(shape))             # views of the received bytes: no copy
        at += n
    g.U, g.V, g.sigma, g.s, g.eps, g.eps_first = values[:6]
    g.width, g.k_apply = width, k_apply
    g.fresh = [i for i, f in enumerate(head[_META:]) if f]
    g.answers, g.pending = None, None
    if answers:                                                # an accelerator's answers, read next time
        r_env, unconverged, infinite = values[6].long(), values[7] > 0.5, values[8] > 0.5
        g.answers = (r_env, unconverged, infinite)
        g.pending = read_later(g.answers, g.eps.device)

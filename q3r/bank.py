"""A bank of reweighting operators, batched by matrix shape (Algorithm 1 for many matrices).

Same-shape targets form one group: their operators are stacked as U (G, d1, k),
V (G, d2, k), sigma (G, k), eps (G,), so a reweighting is one batched decomposition and
applying R is a few batched matmuls. A group carries ``width`` = k columns, at least
r_target + 1 + oversample and at least r_env + 1 for every member (padding columns have
s = 0 and contribute nothing).

Refreshing uses a full SVD for a matrix's first fit (eps = +inf: no operator yet, which
includes a Delta W that has just left zero) and, after that, subspace iteration
warm-started from the previous right singular subspace (``svd="warm"``), or always a full
SVD (``svd="exact"``). When r_env comes near the width, the group carries more columns: on
CPU only the members at the edge are fitted by full SVD (the others keep their triplets and get
new start columns), on an accelerator the whole group is refitted at the next reweighting.

eps is a running minimum (eps <- min(eps, sigma_{r+1})), and a Ritz value is a lower bound
of the singular value it estimates, so one unconverged estimate would pull eps below the
exact one for the rest of training (measured: 5-18% at lambda 30 with one iteration). So a
Ritz value of sigma_{r+1} may lower eps only once it has converged: the relative residual
||W v - sigma u|| / sigma of the (r+1)-th Ritz triplet (one matrix-vector product per
matrix) must be at most ``ritz_tol`` = 0.005. A small residual puts the Ritz value near *some*
singular value, not necessarily sigma_{r+1}: where the warm subspace holds little of v_{r+1}
(wider matrices, denser spectra), it sits next to sigma_{r+2} with a residual of about
cos * gap (gap = 1 - sigma_{r+2} / sigma_{r+1}, cos = the part of v_{r+1} it holds), so the
tolerance must be well below the gaps it should resolve; at the former 0.02, gaps of 2-3%
passed (issue 23, tests/q3r/test_warm_eps.py). On CPU the matrices that miss it (mostly in the first reweightings, while
Adam still moves the weights fast) get up to ``refine_iters`` more iterations and then a
full SVD, each only for those matrices, so every eps is set from a converged value. (A Ritz
value at or above eps cannot lower it, whatever its error: such a matrix gets neither; early in
training, while singular values grow, that is most of them.) Measured
(``benchmarks/warm_eps.py``, docs/benchmarks.md): eps against a full SVD's at every
reweighting, at the corners of the default search space, widths 64, 192 and 384.

On CPU these checks are immediate. On an accelerator nothing is read back in ``refresh``:
the answers (r_env, which members did not converge, which still have eps = +inf) are
copied to the host without blocking and acted on at the next reweighting (a wider refit,
full SVDs for those members), and meanwhile an unconverged value cannot lower eps, so eps
may lag by one period but never falls below the exact one.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .bank_state import bank_state, load_bank_state
from .decomposition import full_svd, ritz_residual, warm_triplets
from .distributed import check_same, exchange, expect, plan, workers
from .functional import q3r_value, reweight, shift
from .group import _Group, _infinite, read_later
from .operator import ReweightingOperator
from .packing import PackedWeights
from .ranks import resolve_rank
from .schedules import EpsSchedule, make_schedule, next_eps
from .targets import Target

SVD_MODES = ("warm", "exact")
class OperatorBank:
    """The reweighting operators of a list of targets, batched by shape.

    Args:
        targets: the regularized matrices (see ``select_targets``).
        target_rank: a fraction in (0, 1] mapped through ``target_rank`` per shape, or an int rank.
        eps_schedule: "paper" (default), "geometric", a dict with its arguments (such as
            {"name": "linear", "steps": N}), or a callable.
        svd: "warm" (subspace iteration from the previous fit) or "exact" (full SVD every time).
        power_iters: subspace iterations per warm reweighting.
        oversample: extra columns carried beyond r_env + 1, for the warm start's accuracy.
        ritz_tol: the largest relative residual ||W v - sigma u|| / sigma of the (r+1)-th Ritz
            triplet at which its value may set eps (``math.inf``: always, the behaviour before
            this check; it lets eps drift below the exact one, see the module docstring).
        refine_iters: extra subspace iterations, only on the unconverged matrices whose Ritz value
            could lower eps, before those fall back to a full SVD (CPU; an accelerator refits them
            at the next reweighting).
        pack: keep each shape group's weights in one buffer whose views are the parameters, so
            ``descend`` updates them in place instead of stacking and copying back (see ``packing.py``).
        distributed: under torch.distributed, "share" (each rank refreshes a part of every group,
            then sends it to the others; also True) or "broadcast" (rank 0 refreshes, then
            broadcast), so that every rank holds the same operators; None: each rank on its own (see ``distributed.py``).
        process_group: the ranks that share the reweighting (default: the default group).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        target_rank: float | int = 0.2,
        eps_schedule="paper",
        svd: str = "warm",
        power_iters: int = 1,
        oversample: int = 8,
        ritz_tol: float = 0.005,
        refine_iters: int = 2,
        pack: bool = False,
        distributed=None,
        process_group=None,
    ):
        if svd not in SVD_MODES:
            raise ValueError(f"svd must be one of {SVD_MODES}, but got svd={svd!r}")
        if power_iters < 1:
            raise ValueError(f"power_iters must be >= 1, but got power_iters={power_iters}")
        if oversample < 0:
            raise ValueError(f"oversample must be >= 0, but got oversample={oversample}")
        if not ritz_tol > 0:
            raise ValueError(f"ritz_tol must be > 0, but got ritz_tol={ritz_tol}")
        if refine_iters < 0:
            raise ValueError(f"refine_iters must be >= 0, but got refine_iters={refine_iters}")
        self.targets = list(targets)
        self.workers = workers(distributed, process_group)
        self.schedule: EpsSchedule = make_schedule(eps_schedule)
        self.svd, self.power_iters, self.oversample = svd, power_iters, oversample
        self.ritz_tol, self.refine_iters = float(ritz_tol), refine_iters
        # matrices refreshed; of those, refined by extra iterations; full SVDs (a matrix's first
        # fit, a laggard, a group refitted at a new width): host counts, for benchmarks
        self.fits: Counter = Counter(refresh=0, refine=0, svd=0)
        self.reweightings = 0       # refreshes done, for schedules that count them ("warmup")
        self.groups: list[_Group] = []
        by_key: dict[tuple, _Group] = {}
        for t in self.targets:
            w = t.weight
            key = (t.shape, w.dtype, w.device)
            if key not in by_key:
                rank = resolve_rank(t.shape, target_rank)
                width = min(min(t.shape), rank + 1 + oversample)
                by_key[key] = _Group([], rank, width, w.new_full((0,), math.inf))
                self.groups.append(by_key[key])
            by_key[key].targets.append(t)
        self.owners = [0] * len(self.groups)    # the rank that refreshes each group
        if self.workers is not None:
            self._share_out()
        for g in self.groups:
            g.packed = PackedWeights(g.targets) if pack else None  # packed by the first stacked(): views from here on
            g.eps = g.stacked().new_full((len(g.targets),), math.inf)
            g.eps_first = g.eps.clone()
            g.fresh = list(range(len(g.targets)))

    def _share_out(self) -> None:
        """Split the groups into parts, one per rank (or give every group to rank 0)."""
        w = self.workers
        check_same(self.targets, w)
        if len({t.param.device for t in self.targets}) > 1:
            raise ValueError("distributed Q3R needs every target on one device, but got "
                             f"{sorted({str(t.param.device) for t in self.targets})}")
        if w.strategy == "broadcast":
            return
        parts = plan([(g.targets, g.width) for g in self.groups], w.world)
        self.groups = [_Group(members, self.groups[i].rank, self.groups[i].width, self.groups[i].eps)
                       for i, members, _ in parts]
        self.owners = [r for _, _, r in parts]

    @property
    def fitted(self) -> bool:
        return all(g.U is not None for g in self.groups)

    # ---- Algorithm 1, batched ------------------------------------------------------------
    @torch.no_grad()
    def refresh(self) -> None:
        """Reweight every operator at the current weights (Algorithm 1); under ``distributed``, each
        rank its own groups, then every rank receives the others'."""
        rank = 0 if self.workers is None else self.workers.rank
        before = dict(self.fits)
        message = None if self.workers is None else expect(self)     # sized (receives posted) before refreshing
        for g, owner in zip(self.groups, self.owners):
            if owner == rank:
                self._refresh_group(g)
        if self.workers is not None:
            exchange(self, before, message)
        self.reweightings += 1

    def _refresh_group(self, g: _Group) -> None:
        W = g.stacked()                                            # (G, d1, d2)
        self.fits["refresh"] += len(g.targets)
        now = self._reads_now(W)
        g.answers = None
        full = self.svd == "exact" or g.U is None
        redo = set()
        if g.pending is not None:                                  # an accelerator's answers from last time
            r_env_lagged, unconverged, infinite, event = g.pending
            event.synchronize()                                    # long finished: no stall
            full |= self._resize(g, int(r_env_lagged))
            redo.update(torch.nonzero(unconverged).flatten().tolist())
            g.fresh = torch.nonzero(infinite).flatten().tolist()
            g.pending = None
        redo.update(g.fresh)                                       # no operator yet: a full SVD, never warm
        if full:
            self._exact(g, W)
        else:
            self._warm(g, W, redo, now)

    def _reads_now(self, W: Tensor) -> bool:
        """Whether the host may read the device's answers at once (free on CPU)."""
        return W.device.type == "cpu"

    def _warm(self, g: _Group, W: Tensor, redo: set, now: bool) -> None:
        """Warm refresh of group g; full SVDs for the members in ``redo`` (and, on CPU, for
        those whose sigma_{r+1} did not converge in ``refine_iters`` more iterations and whose
        Ritz value could lower eps); on CPU, wider (``_widen``) when r_env came near the width."""
        U, S, V = warm_triplets(W, g.V[..., : g.width], self.power_iters)
        ok = self._converged(g, W, U, S, V) | self._settled(g, S[:, g.rank])   # (G,): may set eps, or cannot move it
        if now:                                                    # converge the laggards that could lower eps
            bad = [i for i in torch.nonzero(~ok).flatten().tolist() if i not in redo]
            self.fits["refine"] += len(bad) if self.refine_iters else 0
            for _ in range(self.refine_iters):
                if not bad:
                    break
                idx = torch.tensor(bad, device=W.device)
                Wi = W[idx]
                Ui, Si, Vi = warm_triplets(Wi, V[idx], 1)
                U[idx], S[idx], V[idx] = Ui, Si, Vi
                still = (~self._converged(g, Wi, Ui, Si, Vi)).tolist()
                bad = [i for i, b in zip(bad, still) if b]
            if bad:                                                # a full SVD only where eps needs it
                idx = torch.tensor(bad, device=W.device)
                settled = self._settled(g, S[idx, g.rank], idx).tolist()
                bad = [i for i, b in zip(bad, settled) if not b]
            redo.update(bad)
        exact = None                                               # (members, U, S, Vh): fitted by full SVD
        if redo:                                                   # first fits and laggards: full SVDs
            exact = self._svd(W, torch.tensor(sorted(redo), device=W.device))
            w = g.width
            idx, Ue, Se, Vhe = exact
            U[idx], S[idx], V[idx] = Ue[..., :w], Se[..., :w], Vhe[..., :w, :].mT
            ok[idx] = True
        sigma_next = S[:, g.rank]                                  # sigma_{r+1}(W)
        if not now:                                                # an unconverged Ritz value is only a lower
            sigma_next = torch.where(ok, sigma_next, torch.maximum(sigma_next, g.eps))  # bound: it cannot lower eps
        eps = self._next_eps(g, sigma_next)
        r_env = (S > eps.unsqueeze(-1)).sum(-1)                    # (G,); Ritz values: a lower bound
        if now:                                                    # free to look now
            if exact is not None:                                  # exact counts, which may pass the width
                r_env[exact[0]] = (exact[2] > eps[exact[0]].unsqueeze(-1)).sum(-1)
            r_env_max = int(r_env.max())                           # one host read
            if self._too_narrow(g, r_env_max):                     # r_env reached the width: carry more
                return self._widen(g, W, U, S, V, eps, r_env, exact)
            self._resize(g, r_env_max)                             # (only shrinks here)
            k_apply = max(1, r_env_max)
            g.fresh = _infinite(eps)
        else:                                                      # read back without blocking, used next time
            g.answers = (r_env.max(), ~ok, torch.isinf(eps))
            g.pending = read_later(g.answers, W.device)
            k_apply = g.width
        self._set(g, U, S, V, eps, k_apply)

    def _svd(self, W: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Full SVDs of the members ``idx``: (idx, U, S, Vh)."""
        self.fits["svd"] += len(idx)
        return (idx, *full_svd(W[idx]))

    def _widen(self, g: _Group, W: Tensor, U: Tensor, S: Tensor, V: Tensor, eps: Tensor, r_env: Tensor,
               exact: Optional[tuple]) -> None:
        """r_env came too close to the width (CPU): carry more columns. The members at the edge
        (r_env + 1 > width - oversample/2) are fitted by full SVD and their eps set from it; members
        already fitted by full SVD in this refresh (``exact``) take their own; the others keep their
        warm triplets, whose r_env lies well inside the old width, padded with zero columns (s = 0:
        nothing applied) and new start columns in V for the next warm refresh to converge."""
        w, G = g.width, len(g.targets)
        edge = r_env + 1 > w - self.oversample // 2
        if exact is not None:
            edge[exact[0]] = False
        fitted = [exact] if exact is not None else []
        if edge.any():
            near = self._svd(W, torch.nonzero(edge).flatten())
            eps[near[0]] = self._next_eps(g, near[2][:, g.rank], near[0])
            r_env[near[0]] = (near[2] > eps[near[0]].unsqueeze(-1)).sum(-1)
            fitted.append(near)
        r_env_max = int(r_env.max())
        width = self._width_for(g, r_env_max)
        gen = torch.Generator(W.device).manual_seed(self.reweightings)       # start columns: never the user's RNG
        start = torch.randn(G, W.shape[-1], width - w, generator=gen, device=W.device, dtype=W.dtype)
        for _ in range(2):                                          # towards the next singular vectors
            start = W.mT @ (W @ start)
            start = torch.linalg.qr(start - V @ (V.mT @ start)).Q
        Vn = torch.cat([V, torch.linalg.qr(torch.cat([V, start], -1)).Q[..., w:]], -1)   # orthonormal to V
        Un, Sn = F.pad(U, (0, width - w)), F.pad(S, (0, width - w))
        for idx, Ue, Se, Vhe in fitted:
            Un[idx], Sn[idx], Vn[idx] = Ue[..., :width], Se[..., :width], Vhe[..., :width, :].mT
        g.width = width
        g.fresh = _infinite(eps)
        self._set(g, Un, Sn, Vn, eps, max(1, r_env_max))

    def _set(self, g: _Group, U: Tensor, S: Tensor, V: Tensor, eps: Tensor, k_apply: int) -> None:
        g.U, g.sigma, g.V, g.eps = U, S, V, eps
        g.eps_first = torch.where(torch.isinf(g.eps_first), eps, g.eps_first)
        g.s = shift(S, eps)
        g.k_apply = k_apply

    def _converged(self, g: _Group, W: Tensor, U: Tensor, S: Tensor, V: Tensor) -> Tensor:
        """Whether each Ritz value of sigma_{r+1} has converged, (G,)."""
        return ritz_residual(W, U, S, V, g.rank) <= self.ritz_tol

    def _settled(self, g: _Group, sigma_next: Tensor, idx: Optional[Tensor] = None) -> Tensor:
        """Whether eps comes out the same wherever the true sigma_{r+1} lies at or above this Ritz
        value of it (a lower bound; schedules do not decrease in sigma_{r+1}), (G,): for the paper's
        rule, whether it is >= eps. A zero Ritz value may hide a small true one: never settled."""
        low = self._next_eps(g, sigma_next, idx)
        high = self._next_eps(g, torch.full_like(sigma_next, math.inf), idx)
        return (low == high) & (sigma_next > 0)

    def _exact(self, g: _Group, W: Tensor) -> None:
        """Full SVD of every member: r_env is counted exactly and the width set for it."""
        U, S, Vh = full_svd(W)
        self.fits["svd"] += len(g.targets)
        eps = self._next_eps(g, S[:, g.rank])
        r_env_max = int((S > eps.unsqueeze(-1)).sum(-1).max())    # a host read, on this rare path only
        g.width = w = self._width_for(g, r_env_max)
        self._set(g, U[..., :w], S[..., :w], Vh[..., :w, :].mT, eps, max(1, r_env_max))
        g.pending = None
        g.fresh = _infinite(eps)

    def _next_eps(self, g: _Group, sigma_next: Tensor, idx: Optional[Tensor] = None) -> Tensor:
        """The schedule's eps; a matrix with sigma_{r+1} = 0 (a zero-initialised Delta W in
        fine-tuning) keeps its old eps (+inf at first: R is the identity) instead of eps = 0,
        which would switch Q3R off for the rest of training."""
        eps_old = g.eps if idx is None else g.eps[idx]
        first = g.eps_first if idx is None else g.eps_first[idx]
        eps = next_eps(self.schedule, eps_old, sigma_next, first, self.reweightings)
        return torch.where(eps > 0, eps, eps_old)

    def _width_for(self, g: _Group, r_env_max: int) -> int:
        return min(g.max_width, max(g.rank + 1, r_env_max + 1) + self.oversample)

    def _too_narrow(self, g: _Group, r_env_max: int) -> bool:
        """r_env came too close to the width, and a wider fit is possible."""
        return r_env_max + 1 > g.width - self.oversample // 2 and self._width_for(g, r_env_max) > g.width

    def _resize(self, g: _Group, r_env_max: int) -> bool:
        """After a warm fit: True if r_env came too close to the width (refit exactly);
        shrink the width when it is far larger than needed."""
        if self._too_narrow(g, r_env_max):
            return True
        want = self._width_for(g, r_env_max)
        if want < g.width - self.oversample:
            g.width = want
        return False

    # ---- applying the operators ------------------------------------------------------------
    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("the reweighting operators are not fitted yet: call refresh() first")

    def reweighted(self) -> list[tuple[_Group, Tensor]]:
        """R(W) of every target at its current weight, per group as (G, d1, d2)."""
        self._require_fit()
        return [(g, reweight(g.stacked(), *g.factors())) for g in self.groups]

    @torch.no_grad()
    def descend(self, scale: float) -> None:
        """W <- W - scale * R(W) for every target, in place: one fused batched matmul per group."""
        self._require_fit()
        for g in self.groups:
            buffer = g.packed.buffer() if g.packed is not None else None
            W = buffer if buffer is not None else g.copies()           # (G, d1, d2): the packed buffer, or a copy
            g.buffers.descend(W, *g.factors(), scale, g.fit)             # R(W) = W + X Y, in place
            if buffer is None:
                torch._foreach_copy_([t.weight.detach() for t in g.targets], W.unbind(0))

    def values(self, detach: bool = False) -> list[tuple[_Group, Tensor]]:
        """Q3R values 1/2 <W, R(W)> per group as (G,), differentiable unless ``detach``."""
        self._require_fit()
        return [(g, q3r_value(g.stacked(detach), *g.factors())) for g in self.groups]

    def total(self) -> Tensor:
        """Sum of the Q3R values of all targets, differentiable in the weights."""
        return sum(v.sum() for _, v in self.values())

    def operators(self) -> dict[str, ReweightingOperator]:
        """Each target's operator, cut to its own r_env columns."""
        self._require_fit()
        ops = {}
        for g in self.groups:
            for i, t in enumerate(g.targets):
                r = int((g.s[i] < 0).sum())
                ops[t.name] = ReweightingOperator(g.U[i, :, :r], g.sigma[i, :r], g.V[i, :, :r], float(g.eps[i]))
        return ops

    # ---- persistence (bank_state.py) -----------------------------------------------------------
    def state_dict(self) -> dict:
        """Every target's operator (U, sigma, V, eps, eps_first) by target name, plus its group's width."""
        return bank_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Load a ``state_dict``, also one saved with its targets grouped otherwise (another number of ranks)."""
        load_bank_state(self, state)

"""The reweighting shared out over DDP ranks (q3r/distributed.py), run for real: two processes
on gloo (see ddp_run.py), a tiny float64 model, nine steps with five reweightings.

Checked: the replicas and their banks stay bitwise equal across ranks for AdamQ3R (both
strategies; packed before or after wrapping) and for Adam + Q3RPenalty; a two-rank run at the
same global batch matches a one-process run (losses, eps, weights); a bank's state_dict
round-trips under the distributed mode and loads into a one-process bank; targets resolve
through the DDP wrapper. Without the slow runs: ``plan``'s cuts and midpoint rule, ``cost``, and
``workers`` on two forked ranks with a process group of its own, also as AdamQ3R hands it on."""
import copy
import os
import tempfile
from collections import Counter
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import q3r.bank
import q3r.distributed
from q3r.adamq3r import AdamQ3R
from q3r.bank import OperatorBank
from q3r.distributed import Workers, cost, plan, workers
from q3r.penalty import Q3RPenalty
from q3r.targets import Target, select_targets

from .ddp_run import STEPS, banks, build, launch, make, train

# (technique, strategy, wrap the model before building the optimizer (which then packs a wrapped
# model), bank options); True is the default strategy. "narrow" carries no spare columns: widths
# grow, laggards get full SVDs; "lagged" takes an accelerator's path on CPU: answers read back at
# the next reweighting.
CASES = [("adamq3r", "share", False, ""), ("adamq3r", "broadcast", False, ""), ("adamq3r", "share", True, ""),
         ("adam_q3r_loss", True, False, ""), ("adam_q3r_loss", "broadcast", False, ""),
         ("adamq3r", "share", False, "narrow"), ("adamq3r", "broadcast", False, "narrow"),
         ("adamq3r", "share", False, "narrow-exact"), ("adamq3r", "share", False, "narrow-lagged")]
OPTIONS = {"": {}, "narrow": {"oversample": 0}, "narrow-exact": {"oversample": 0, "svd": "exact"},
           "narrow-lagged": {"oversample": 0}}

pytestmark = pytest.mark.xdist_group("ddp_runs")        # under pytest-xdist, one worker builds the module's fixtures
# the tests of the two-rank runs (the ``runs`` fixture: ~30 s, and a fork server per process) are left out of
# `make mutants`; the functions they run in this process are run by faster tests too (tests/MUTANTS.md)
DDP_RUNS = pytest.mark.mutation_slow



def _build(technique, model, strategy, options):
    opt, penalty = build(technique, model, strategy, **OPTIONS[options])
    if options.endswith("lagged"):
        for bank in banks(opt, penalty):
            bank._reads_now = lambda W: False
    return opt, penalty
RESUME_AT = 5


def _snapshot(model, opt, penalty, losses):
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "banks": [b.state_dict() for b in banks(opt, penalty)],
            "owners": [list(b.owners) for b in banks(opt, penalty)],
            "fits": [dict(b.fits) for b in banks(opt, penalty)],
            "host": [[(g.width, g.U.shape[-1], g.k_apply, list(g.fresh), g.pending is None) for g in b.groups]
                     for b in banks(opt, penalty)],
            "views": all(g.packed is None or all(_inside(t.param, g.packed.buffer()) for t in g.targets)
                         for b in banks(opt, penalty) for g in b.groups),
            "losses": losses}


def _inside(p, buffer):
    start = buffer.data_ptr()
    return start <= p.data_ptr() < start + buffer.numel() * buffer.element_size()


def _count_messages() -> Counter:
    """Counts, in this process, the reweightings, the messages of their exchanges (``_gather``), those
    whose receives were posted before the refresh, and the all-reduces made during a reweighting."""
    counts, inside = Counter(), []
    refresh, gather, all_reduce, expect = OperatorBank.refresh, q3r.distributed._gather, dist.all_reduce, q3r.bank.expect

    def counted_refresh(self):
        counts["reweightings"] += 1
        inside.append(True)
        try:
            refresh(self)
        finally:
            inside.pop()

    def counted_gather(*a, **kw):
        counts["messages"] += 1
        return gather(*a, **kw)

    def counted_expect(bank):
        message = expect(bank)
        counts["posted"] += message.posted is not None         # receives posted before the local refresh
        return message

    def counted_all_reduce(*a, **kw):
        counts["all_reduces"] += bool(inside)
        return all_reduce(*a, **kw)

    OperatorBank.refresh, q3r.distributed._gather, dist.all_reduce = counted_refresh, counted_gather, counted_all_reduce
    q3r.bank.expect = counted_expect
    return counts


def _worker(rank, world, out):
    results = {}
    counts = _count_messages()                                 # a forked process of its own: patched here only
    for technique, strategy, wrap_first, options in CASES:
        counts.clear()
        model = make()
        if wrap_first:
            ddp = DDP(model)
            opt, penalty = _build(technique, model, strategy, options)
        else:
            opt, penalty = _build(technique, model, strategy, options)
            ddp = DDP(model)
        losses = train(ddp, opt, penalty, STEPS, rank, world)
        results[(technique, strategy, wrap_first, options)] = _snapshot(model, opt, penalty, losses) | {
            "counts": dict(counts)}
    # resume: save at RESUME_AT, load into another model and optimizer, go on side by side
    model = make()
    opt, _ = build("adamq3r", model, "share")
    ddp = DDP(model)
    train(ddp, opt, None, RESUME_AT, rank, world)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})   # state_dicts share tensors
    other = make(seed=1)
    other_opt, _ = build("adamq3r", other, "share")
    other_ddp = DDP(other)
    other.load_state_dict(saved["model"])
    other_opt.load_state_dict(saved["opt"])
    train(ddp, opt, None, STEPS - RESUME_AT, rank, world, start=RESUME_AT)
    train(other_ddp, other_opt, None, STEPS - RESUME_AT, rank, world, start=RESUME_AT)
    results["resume"] = {"saved": saved["opt"]["q3r"], "model": saved["model"],
                         "same": [torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters())]}
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(_worker, 2, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _equal(a, b, path=""):
    """Bitwise equality of nested dicts/lists of tensors; the first difference as a message."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path}: max |diff| {(a - b).abs().max().item()}"
    else:
        assert a == b, f"{path}: {a} != {b}"


@DDP_RUNS
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_replicas_and_banks_stay_bitwise_equal(runs, case):
    r0, r1 = runs[0][case], runs[1][case]
    _equal(r0["params"], r1["params"], "params")
    _equal(r0["banks"], r1["banks"], "banks")               # U, sigma, V, eps, widths, pending
    _equal(r0["fits"], r1["fits"], "fits")
    _equal(r0["host"], r1["host"], "host")                  # what decides the next refresh's path
    assert r0["views"] and r1["views"]                      # packing survived DDP
    owners = r0["owners"][0]                                # the work really was split: every group in two
    assert owners == ([0, 1, 0, 1, 0, 1] if case[1] in ("share", True) else [0, 0, 0])   # True: the default, share


@DDP_RUNS
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_one_message_per_rank_and_reweighting_carries_the_host_values(runs, case):
    """The host values travel at the head of the operators' message (no all-reduce), sized before the
    refresh (on gloo with the receives posted then, before the local refresh: "share"); a second message
    only where a group came back wider than its room (widths that grow)."""
    for r in runs:
        counts = r[case]["counts"]
        assert counts.get("all_reduces", 0) == 0
        assert counts["reweightings"] == 5
        assert counts.get("posted", 0) == (5 if case[1] in ("share", True) else 0)   # gloo: receives posted early
        if case[3] == "":                                      # widths stay: one message each
            assert counts["messages"] == counts["reweightings"]
        else:                                                  # narrow: some widths grow, a second message
            assert counts["reweightings"] < counts["messages"] < 2 * counts["reweightings"]


@DDP_RUNS
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_two_ranks_match_one_process_at_the_same_global_batch(runs, case):
    """To rounding, except where a part's width differs from its whole group's: with a narrow warm
    start shared out, a part widens on its own and refits other matrices by full SVD than the whole
    group does, so eps agrees to the Ritz values' accuracy (1% allowed; measured: 0.12% on
    eps, 3e-5 on the losses, 0.2% on the weights), and on the accelerator's lagged path to one
    period's lag (measured: 2.9% on eps), not to rounding: see docs/distributed.md."""
    technique, strategy, _, options = case
    model = make()
    opt, penalty = _build(technique, model, None, options)
    losses = train(model, opt, penalty, STEPS)
    tol = dict(eps=1e-8, loss=1e-9, weights=1e-8)
    if strategy in ("share", True) and options in ("narrow", "narrow-lagged"):
        tol = dict(eps=1e-2 if options == "narrow" else 5e-2, loss=1e-3, weights=1e-2)
    ranks_mean = [(a + b) / 2 for a, b in zip(runs[0][case]["losses"], runs[1][case]["losses"])]
    assert ranks_mean == pytest.approx(losses, rel=tol["loss"], abs=0)
    for name, p in model.named_parameters():                   # relative to the weight's norm
        gap = (runs[0][case]["params"][name] - p.detach()).norm() / p.detach().norm()
        assert gap <= tol["weights"], f"{name}: ||diff|| / ||W|| = {gap:.2e}"
    ref = banks(opt, penalty)[0].state_dict()
    got = runs[0][case]["banks"][0]
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name]["eps"], ref[name]["eps"], rtol=tol["eps"], atol=0, msg=name)
    assert runs[0][case]["fits"][0]["refresh"] == banks(opt, penalty)[0].fits["refresh"]   # summed over ranks


@DDP_RUNS
def test_state_dict_round_trips_under_the_distributed_mode(runs):
    assert all(runs[0]["resume"]["same"]) and all(runs[1]["resume"]["same"])
    _equal(runs[0]["resume"]["saved"], runs[1]["resume"]["saved"], "saved")


@DDP_RUNS
def test_two_rank_checkpoint_loads_into_a_one_process_optimizer(runs):
    """The shared-out bank's parts regroup on load (padded to the widest): the operators are the saved ones."""
    saved = runs[0]["resume"]
    model = make(seed=1)
    model.load_state_dict(saved["model"])
    opt, _ = build("adamq3r", model)
    opt.load_state_dict({**opt.state_dict(), "q3r": saved["saved"]})
    ops = opt.operators()
    bank_state = saved["saved"]["banks"][0]
    for name, entry in bank_state.items():
        r = int((entry["sigma"] > entry["eps"]).sum())
        assert ops[name].rank == r
        torch.testing.assert_close(ops[name].U, entry["U"][:, :r], rtol=0, atol=0)
        assert ops[name].eps == float(entry["eps"])
    train(model, opt, None, 3, start=RESUME_AT)                # and it trains on
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- without other processes --------------------------------------------------------------------
def test_plan_cuts_every_group_into_one_run_of_whole_parameters_per_rank():
    """Each rank the same share of every shape, whatever the shapes cost; groups smaller than the
    number of ranks stay whole and are dealt out by cost."""
    sizes = (4, 16, 64)                                        # three groups of very different cost
    flat = [[Target(nn.Parameter(torch.zeros(d, d)), f"g{g}.{i}") for i in range(4)] for g, d in enumerate(sizes)]
    named = lambda parts: [(gi, [t.name for t in ts], r) for gi, ts, r in parts]   # noqa: E731
    assert named(plan([(ts, 2) for ts in flat], 2)) == [
        (0, ["g0.0", "g0.1"], 0), (0, ["g0.2", "g0.3"], 1), (1, ["g1.0", "g1.1"], 0), (1, ["g1.2", "g1.3"], 1),
        (2, ["g2.0", "g2.1"], 0), (2, ["g2.2", "g2.3"], 1)]
    assert [r for _, _, r in plan([(ts, 2) for ts in flat], 4)] == [0, 1, 2, 3] * 3
    singles = [[Target(nn.Parameter(torch.zeros(4, 4)), f"s{i}")] for i in range(3)]
    assert named(plan([(flat[0], 2)] + [(ts, 2) for ts in singles], 2)) == [
        (0, ["g0.0", "g0.1"], 0), (0, ["g0.2", "g0.3"], 1), (1, ["s0"], 0), (2, ["s1"], 1), (3, ["s2"], 1)]

    model = make()
    groups = {}
    for t in select_targets(model):
        groups.setdefault(t.shape, []).append(t)
    for world in (2, 3):
        parts = plan([(ts, 5) for ts in groups.values()], world)
        seen = [t for _, ts, _ in parts for t in ts]
        assert sorted(map(id, seen)) == sorted(id(t) for ts in groups.values() for t in ts)   # each once
        for gi, members in enumerate(groups.values()):
            mine = [(ts, r) for g, ts, r in parts if g == gi]
            assert [r for _, r in mine] == list(range(world))                  # a run for every rank, in order
            assert [t for ts, _ in mine for t in ts] == members                 # runs: the group in its order
            assert all(sum(u.param is t.param for u in ts) == 3 for ts, _ in mine for t in ts if "qkv" in t.name)
            load = [cost(ts, 5) for ts, _ in mine]
            biggest = max(cost([t for t in members if t.param is u.param], 5) for u in members)
            assert max(load) - min(load) <= biggest                            # one parameter, at most


def test_plan_deals_the_small_groups_by_the_exact_midpoint_rule():
    """Groups smaller than the number of ranks, laid end to end: each parameter goes to rank
    floor((cost before it + half its cost) * world / total), in exact fractions; a midpoint half a unit
    before a cut stays below it, one exactly on a cut goes above."""
    def reference(costs, world):
        total, done, ranks = sum(costs), Fraction(0), []
        for c in costs:
            ranks.append(int((done + Fraction(c, 2)) * world // total))
            done += c
        return ranks

    def dealt(shapes, width, world):
        groups = [([Target(nn.Parameter(torch.zeros(*s)), f"t{i}")], width) for i, s in enumerate(shapes)]
        return [r for _, _, r in plan(groups, world)], [cost(ts, w) for ts, w in groups]

    ranks, costs = dealt([(2, 4), (3, 3), (3, 3)], 1, 2)       # costs a, b, a + 1: 2a + b = total - 1
    assert ranks == reference(costs, 2) == [0, 0, 1]
    ranks, costs = dealt([(2, 4), (3, 3), (2, 4)], 1, 2)       # costs a, b, a: b's midpoint on the cut
    assert ranks == reference(costs, 2) == [0, 1, 1]
    g = torch.Generator().manual_seed(0)
    for world in (2, 3, 4):
        shapes = [tuple(int(d) for d in torch.randint(2, 40, (2,), generator=g)) for _ in range(world - 1)]
        ranks, costs = dealt(shapes, 3, world)
        assert ranks == reference(costs, world)


def _two_ranks(rank, world, rendezvous):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        alone, both = dist.new_group([0]), dist.new_group([0, 1])      # every rank creates every group
        assert workers(True) == Workers("share", rank, 2, None)       # True: the default strategy
        assert workers("broadcast", both) == Workers("broadcast", rank, 2, both)
        if rank == 0:
            assert workers("share", alone) is None                      # one rank in the given group
        solo = [alone, dist.new_group([1])][rank]
        w = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
        opt = AdamQ3R([w], targets=[Target(w, "w")], distributed="share", process_group=solo)
        assert opt.banks[0].workers is None                            # AdamQ3R hands its process_group on
        penalty = Q3RPenalty([Target(w, "w")], distributed="share", process_group=solo)
        assert penalty.bank.workers is None                            # so does Q3RPenalty
        assert OperatorBank([Target(w, "w")], distributed="share", process_group=solo).workers is None
        assert OperatorBank([Target(w, "w")], distributed="share", process_group=both).workers.world == 2
    finally:
        dist.destroy_process_group()


def test_workers_read_the_strategy_and_the_given_process_group_on_two_ranks():
    """Two forked processes on gloo (no autograd in them, so a plain fork; ~0.3 s, unlike ``runs``): the
    ranks and the world come from the process group passed, not from the default one, also the one
    AdamQ3R, Q3RPenalty and OperatorBank are given."""
    # The same calls in this process, without a process group: mutmut maps a test to the functions its own
    # process runs (not its forked ranks'), and runs the test for their mutants only (tests/MUTANTS.md).
    w = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    assert workers(True) is None and workers("share", None) is None
    assert AdamQ3R([w], targets=[Target(w, "w")], distributed="share", process_group=None).banks[0].workers is None
    assert Q3RPenalty([Target(w, "w")], distributed="share", process_group=None).bank.workers is None
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_two_ranks, args=(2, os.path.join(tmp, "rendezvous")), nprocs=2, start_method="fork")


def test_cost_is_d1_d2_k_per_matrix_plus_the_fixed_part():
    """The cost model ``plan`` deals small groups by, as its docstring writes it (a 6 x 4 shape: not square)."""
    ts = [Target(nn.Parameter(torch.zeros(6, 4)), f"t{i}") for i in range(3)]
    assert cost(ts, 5) == 3 * (6 * 4 * 5 + q3r.distributed.PER_MATRIX)
    assert cost(ts[:1], 2) == 6 * 4 * 2 + q3r.distributed.PER_MATRIX


def test_without_a_process_group_a_distributed_bank_is_a_plain_one():
    assert not dist.is_initialized()
    assert workers("share") is None and workers(True) is None and workers(None) is None
    a, b = make(), make()
    oa, _ = build("adamq3r", a, "share")
    ob, _ = build("adamq3r", b)
    train(a, oa, None, STEPS)
    train(b, ob, None, STEPS)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_unknown_strategy_is_refused():
    w = nn.Parameter(torch.randn(6, 4))
    with pytest.raises(ValueError, match="distributed must be one of"):
        OperatorBank([Target(w, "w")], distributed="allreduce")


def test_targets_resolve_through_the_ddp_wrapper(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = make()
        wrapped = DDP(model)
        plain, through = select_targets(model), select_targets(wrapped)
        assert [(t.name, t.param_name, t.rows) for t in through] == [(t.name, t.param_name, t.rows) for t in plain]
        assert all(t.param is u.param for t, u in zip(through, plain))
        for pattern in ("blocks.*.fc1", "module.blocks.*.fc1"):
            assert [t.name for t in select_targets(wrapped, (pattern,))] == [f"blocks.{i}.fc1" for i in range(3)]
        other = DDP(make(seed=1))
        moved = [t.rebind(other) for t in plain]
        assert all(t.param is u.param for t, u in zip(moved, select_targets(other)))
        bare = Target(model.blocks[0].fc2.weight, "fc2")
        assert bare.named_in(wrapped).param_name == "blocks.0.fc2.weight"
        assert workers("share") is None and workers(True) is None   # one rank: nothing to share
    finally:
        dist.destroy_process_group()

"""Packed shape groups (q3r/packing.py): the parameters are views of one buffer per group, and
training, checkpoints and DDP behave exactly as with separate parameters."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.packing import PackedWeights
from q3r.targets import Target, select_targets


class Block(nn.Module):
    """A fused qkv (3d x d: three d x d targets), a proj (d x d) and an MLP (4d x d, d x 4d)."""

    def __init__(self, d=8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + self.proj(torch.tanh(q) * torch.sigmoid(k) + v)
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, d=8, depth=2):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def make(seed=0, dtype=torch.float64):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Net().to(dtype)


def data(t, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + t)
    return torch.randn(16, 8, generator=g).to(dtype), torch.randn(16, 3, generator=g).to(dtype)


def opt_for(model, **kw):
    kw = {"lr": 3e-2, "lmbda": 0.5, "period": 3, "target_rank": 0.3, **kw}
    return AdamQ3R(model.parameters(), targets=select_targets(model), **kw)


def train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        x, y = data(t, next(model.parameters()).dtype)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def assert_same(a: nn.Module, b: nn.Module):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{name}: max |diff| {(p - q).abs().max().item()}"


def buffers(opt):
    return [g.packed.buffer() for bank in opt.banks for g in bank.groups]


def inside(p, buffer):
    start = buffer.data_ptr()
    return start <= p.data_ptr() < start + buffer.numel() * buffer.element_size()


def test_parameters_become_views_of_one_buffer_per_shape_group():
    model = make()
    params_before = list(model.parameters())
    opt = opt_for(model)
    assert list(model.parameters()) == params_before                    # the same Parameter objects
    groups = opt.banks[0].groups
    assert sorted(g.packed.buffer().shape for g in groups) == [(2, 8, 32), (2, 32, 8), (8, 8, 8)]
    for g in groups:
        buf = g.packed.buffer()
        for t in g.targets:
            assert isinstance(t.param, nn.Parameter) and t.param.is_leaf and t.param.requires_grad
            assert inside(t.param, buf)
        assert torch.equal(torch.stack([t.weight.detach() for t in g.targets]), buf)
    assert not any(inside(b.qkv.bias, buf) for b in model.blocks for buf in buffers(opt))


def test_packed_training_is_bitwise_the_unpacked_one():
    m1, m2, m0 = make(), make(), make()
    o1, o2, o0 = opt_for(m1), opt_for(m2, pack=False), opt_for(m0, lmbda=0.0)
    assert all(g.packed is None for g in o2.banks[0].groups)
    for m, o in ((m1, o1), (m2, o2), (m0, o0)):
        train(m, o, 10)
    assert_same(m1, m2)
    # Q3R moved the weights (so a step that missed the parameters would show)
    assert not torch.allclose(m1.blocks[0].fc1.weight, m0.blocks[0].fc1.weight, atol=1e-3)
    assert all(inside(t.param, g.packed.buffer()) for g in o1.banks[0].groups for t in g.targets)


def test_lmbda_zero_packed_is_exactly_adam():
    m1, m2 = make(dtype=torch.float32), make(dtype=torch.float32)
    adam = torch.optim.Adam(m1.parameters(), lr=3e-2)
    train(m1, adam, 8)
    train(m2, opt_for(m2, lmbda=0.0), 8)
    assert_same(m1, m2)


def test_checkpoint_of_a_packed_model():
    model, ref = make(), make()
    opt, ref_opt = opt_for(model), opt_for(ref, pack=False)
    train(model, opt, 4)
    train(ref, ref_opt, 4)
    sizes = []
    for m in (model, ref):                                              # same bytes on disk as unpacked
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        sizes.append(len(buf.getvalue()))
    raw = sum(p.numel() * p.element_size() for p in model.parameters())
    assert raw < sizes[0] <= sizes[1]                                   # each weight stored once
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 5, start=4)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    plain = make(seed=1)                                                # an ordinary model loads it
    plain.load_state_dict(saved["model"])
    fresh = make(seed=2)
    fresh_opt = opt_for(fresh)
    addresses = [p.data_ptr() for p in fresh.parameters()]
    fresh.load_state_dict(saved["model"])                               # copies into the views
    fresh_opt.load_state_dict(saved["opt"])
    assert [p.data_ptr() for p in fresh.parameters()] == addresses
    assert_same(plain, fresh)
    train(fresh, fresh_opt, 5, start=4)
    assert_same(fresh, model)


@pytest.mark.parametrize("how", ["own", "shared", "share_memory"])
def test_replaced_parameter_data_is_found_and_repacked(how):
    """Something sets the parameters' data (as Module._apply does): the step must notice. Data
    with storage of its own is packed again; tensors that share one storage (a deep copy of a
    packed state_dict) are left alone and stacked instead; share_memory() moves the buffer's
    storage, which keeps the views. Every way, the result is the unpacked one."""
    model, ref = make(), make()
    opt, ref_opt = opt_for(model), opt_for(ref, pack=False)
    train(model, opt, 4)
    train(ref, ref_opt, 4)
    if how == "share_memory":
        model.share_memory()
    else:
        state = copy.deepcopy(model.state_dict())
        for name, p in model.named_parameters():
            p.data = state[name].clone() if how == "own" else state[name]
    moved = [p.data_ptr() for p in model.parameters()]
    train(model, opt, 5, start=4)
    train(ref, ref_opt, 5, start=4)
    assert_same(model, ref)
    for g in opt.banks[0].groups:
        buf = g.packed.buffer()
        assert (buf is None) == (how == "shared")
        if buf is not None:
            assert all(inside(t.param, buf) for t in g.targets)
            assert buf.is_shared() == (how == "share_memory")
    assert (moved == [p.data_ptr() for p in model.parameters()]) == (how != "own")


def test_groups_that_cannot_be_packed_are_stacked():
    model = make()
    q_only = Target(model.blocks[0].qkv.weight, "q", row_start=0, row_end=8)     # part of a parameter
    tied = nn.Parameter(torch.randn(2, 8, 8, dtype=torch.float64))               # shares its storage
    a, b = nn.Parameter(tied.data[0]), nn.Parameter(tied.data[1])
    assert PackedWeights([q_only]).buffer() is None
    assert PackedWeights([Target(a, "a"), Target(b, "b")]).buffer() is None
    half = nn.Parameter(torch.randn(8, 8, dtype=torch.bfloat16))
    assert PackedWeights([Target(half, "half")]).buffer() is None
    swapped = select_targets(model.blocks[0])[:3][::-1]                           # v, k, q: not in row order
    assert PackedWeights(swapped).spans is None
    assert a.data_ptr() == tied.data_ptr()                                       # left as they were

    m1, m2 = make(), make()
    targets = lambda m: [Target(m.blocks[0].qkv.weight, "q", row_start=0, row_end=8),
                         Target(m.blocks[0].proj.weight, "proj"), Target(m.blocks[1].proj.weight, "proj1")]
    o1 = AdamQ3R(m1.parameters(), lr=3e-2, lmbda=0.5, period=3, target_rank=0.3, targets=targets(m1))
    o2 = AdamQ3R(m2.parameters(), lr=3e-2, lmbda=0.5, period=3, target_rank=0.3, targets=targets(m2), pack=False)
    assert o1.banks[0].groups[0].packed.buffer() is None
    train(m1, o1, 7)
    train(m2, o2, 7)
    assert_same(m1, m2)


def test_ddp_wrapped_model(tmp_path):
    """DistributedDataParallel (gloo, one process) over a packed model, wrapped before or after
    the optimizer packs it, trains exactly as a plain unpacked model."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ref = make()
        ref_opt = opt_for(ref, pack=False)
        train(ref, ref_opt, 7)
        before = make()
        wrapped = DDP(before)
        opt_b = AdamQ3R(wrapped.parameters(), lr=3e-2, lmbda=0.5, period=3, target_rank=0.3,
                        targets=select_targets(before))
        after = make()
        opt_a = opt_for(after)
        wrapped_after = DDP(after)
        for m, o in ((wrapped, opt_b), (wrapped_after, opt_a)):
            train(m, o, 7)
            assert_same(m.module, ref)
        assert all(inside(t.param, g.packed.buffer()) for g in opt_b.banks[0].groups for t in g.targets)
    finally:
        dist.destroy_process_group()


def test_a_group_with_one_replaced_parameter_is_packed_again_whole():
    """One parameter gets data of its own, the other is still a view of the old buffer: both are copied
    into a new buffer, values kept (the old buffer's view counts as packable: it is this group's)."""
    a, b = (nn.Parameter(torch.randn(6, 4, dtype=torch.float64)) for _ in range(2))
    packed = PackedWeights([Target(a, "a"), Target(b, "b")])
    old = packed.buffer()
    assert inside(a, old) and inside(b, old)
    values = [a.detach().clone(), b.detach().clone()]
    a.data = a.data.clone()
    new = packed.buffer()
    assert new is not None and new.data_ptr() != old.data_ptr()
    assert inside(a, new) and inside(b, new)
    assert torch.equal(a, values[0]) and torch.equal(b, values[1])


def test_the_buffer_is_made_on_the_parameters_device():
    """On the meta device (any device but the CPU: the buffer is not the default device's)."""
    weights = [nn.Parameter(torch.empty(4, 3, device="meta")) for _ in range(2)]
    packed = PackedWeights([Target(w, f"w{i}") for i, w in enumerate(weights)])
    buffer = packed.buffer()
    assert buffer.device.type == "meta" and buffer.shape == (2, 4, 3)
    assert all(w.device.type == "meta" for w in weights)

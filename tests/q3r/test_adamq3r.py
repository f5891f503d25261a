"""AdamQ3R (Algorithm 2) against torch.optim.Adam and the float64 reference loop."""
import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from q3r.adamq3r import AdamQ3R
from q3r.bank import OperatorBank
from q3r.operator import ReweightingOperator
from q3r.targets import Target, select_targets

from tests.reference import adamq3r_ref, fit_ref, reweight_ref, target_rank_ref


# ---- a tiny model and its data ---------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, d_in=10, d_h=16, d_out=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_h)
        self.fc2 = nn.Linear(d_h, d_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class FusedAttn(nn.Module):
    """A module attribute named ``qkv`` holding a fused Linear(d, 3d)."""

    def __init__(self, d=12):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(torch.tanh(q) * torch.sigmoid(k) + v)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(cls=Tiny, seed=0, dtype=torch.float64, device="cpu", **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(**kw).to(device, dtype)


def batch(model, t, n=24):
    """Deterministic random data for step t (so a resumed run sees the same batches)."""
    first = next(model.parameters())
    d_in = [m for m in model.modules() if isinstance(m, nn.Linear)][0].in_features
    d_out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    g = torch.Generator().manual_seed(10_000 + t)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64).to(first.device, first.dtype)
    y = torch.randn(n, d_out, generator=g, dtype=torch.float64).to(first.device, first.dtype)
    return x, y


def train(model, opt, steps, start=0, on_step=None):
    for t in range(start, start + steps):
        x, y = batch(model, t)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        if on_step is not None:
            on_step(t)
        opt.step()


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs: max |diff| = {(a[k] - b[k]).abs().max().item()}"


def tiny_opt(model, **kw):
    targets = [Target(model.fc1.weight, "fc1", "fc1.weight"), Target(model.fc2.weight, "fc2", "fc2.weight")]
    kw.setdefault("lr", 1e-2)
    return AdamQ3R(model.parameters(), targets=targets, **kw)


def np_(t):
    return t.detach().cpu().double().numpy()


# ---- lmbda = 0 is Adam ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lmbda_zero_is_exactly_adam(dtype):
    m1, m2 = make(dtype=dtype), make(dtype=dtype)
    assert_same_weights(weights(m1), weights(m2))
    opt1 = torch.optim.Adam(m1.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    opt2 = tiny_opt(m2, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, lmbda=0.0, period=2, target_rank=0.5)
    train(m1, opt1, 30)
    train(m2, opt2, 30)
    assert_same_weights(weights(m1), weights(m2))       # bitwise
    assert not torch.equal(weights(m2)["fc1.weight"], make(dtype=dtype).fc1.weight.detach())


# ---- one step with a zero task gradient is -lr * lmbda * R(W) -------------------------------------

@pytest.mark.parametrize("how", ["zero_loss", "zero_grads"])
@pytest.mark.parametrize("svd", ["warm", "exact"])
def test_zero_gradient_step_is_the_q3r_step(how, svd):
    model = make(d_in=14, d_h=20)
    W1, W2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    b1 = model.fc1.bias.detach().clone()
    lr, lmbda = 0.05, 0.3
    opt = tiny_opt(model, lr=lr, lmbda=lmbda, target_rank=0.2, svd=svd)
    opt.zero_grad()
    if how == "zero_loss":
        (0.0 * sum(p.sum() for p in model.parameters())).backward()
    else:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    opt.step()
    for W0, W_new, r in ((W1, model.fc1.weight, target_rank_ref(20, 14, 0.2)),
                         (W2, model.fc2.weight, target_rank_ref(6, 20, 0.2))):
        op = ReweightingOperator.fit(W0, 0.2)
        expected = W0 - lr * lmbda * op(W0)
        torch.testing.assert_close(W_new.detach(), expected, rtol=1e-12, atol=1e-14)
        eps, _, _ = fit_ref(W0, r)
        np.testing.assert_allclose(np_(W_new), np_(W0) - lr * lmbda * reweight_ref(W0, eps, W0),
                                   rtol=1e-12, atol=1e-14)
    assert torch.equal(model.fc1.bias, b1)            # zero gradient: Adam moves nothing


# ---- refresh at t mod T == 0, and only then -------------------------------------------------------

@pytest.mark.parametrize("period", [1, 3, 4])
def test_operators_refresh_only_at_multiples_of_the_period(monkeypatch, period):
    calls, current = [], {"t": None}
    real_refresh = OperatorBank.refresh

    def spy(self):
        calls.append(current["t"])
        return real_refresh(self)

    monkeypatch.setattr(OperatorBank, "refresh", spy)
    model = make()
    opt = tiny_opt(model, lmbda=0.5, period=period, target_rank=0.5, svd="exact")
    snapshots, before = [], {}

    def on_step(t):
        current["t"] = t
        before[t] = {n: p.detach().clone() for n, p in (("fc1", model.fc1.weight), ("fc2", model.fc2.weight))}

    steps = 13
    for t in range(steps):
        x, y = batch(model, t)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        on_step(t)
        opt.step()
        snapshots.append({n: (op.eps, op.U.clone(), op.sigma.clone()) for n, op in opt.operators().items()})

    assert calls == [t for t in range(steps) if t % period == 0]
    for t in range(1, steps):
        for name in ("fc1", "fc2"):
            eps0, U0, s0 = snapshots[t - 1][name]
            eps1, U1, s1 = snapshots[t][name]
            if t % period == 0:
                assert not torch.equal(s0, s1), (t, name)       # W moved, so sigma changed
                assert eps1 <= eps0                             # eps never increases
            else:
                assert eps0 == eps1 and torch.equal(U0, U1) and torch.equal(s0, s1), (t, name)
    # and each refreshed operator is Algorithm 1 on the weights at that step
    eps_prev = {"fc1": math.inf, "fc2": math.inf}
    for t in range(0, steps, period):
        for name in ("fc1", "fc2"):
            W = before[t][name]
            eps, r_env, sig = fit_ref(W, target_rank_ref(*W.shape, 0.5), eps_prev[name])
            got_eps, _, got_sig = snapshots[t][name]
            assert got_eps == pytest.approx(eps, rel=1e-12)
            assert got_sig.numel() == r_env
            np.testing.assert_allclose(np_(got_sig), sig, rtol=1e-12)
            eps_prev[name] = eps


def test_no_refresh_while_lmbda_is_zero(monkeypatch):
    calls = []
    monkeypatch.setattr(OperatorBank, "refresh", lambda self: calls.append(1))
    model = make()
    opt = tiny_opt(model, lmbda=0.0, period=1)
    train(model, opt, 3)
    assert calls == [] and opt.operators() == {}


# ---- state_dict round trip ------------------------------------------------------------------------

@pytest.mark.parametrize("svd", ["warm", "exact"])
@pytest.mark.parametrize("through_bytes", [False, True])
def test_state_dict_round_trip(svd, through_bytes):
    N, M, period = 7, 8, 3
    model = make(d_in=12, d_h=24)
    opt = tiny_opt(model, lmbda=0.5, period=period, target_rank=0.3, svd=svd, oversample=2)
    train(model, opt, N)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    if through_bytes:
        buf = io.BytesIO()
        torch.save({"model": saved_model, "opt": saved_opt}, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
        saved_model, saved_opt = loaded["model"], loaded["opt"]
    train(model, opt, M, start=N)
    expected = weights(model)

    fresh = make(seed=123, d_in=12, d_h=24)                  # different init, overwritten by the load
    opt2 = tiny_opt(fresh, lmbda=0.5, period=period, target_rank=0.3, svd=svd, oversample=2)
    fresh.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    train(fresh, opt2, M, start=N)
    assert_same_weights(weights(fresh), expected)
    for name, op in opt.operators().items():
        op2 = opt2.operators()[name]
        assert op.eps == op2.eps and torch.equal(op.U, op2.U) and torch.equal(op.V, op2.V)


def test_load_state_dict_without_q3r_entry_raises():
    model = make()
    opt = tiny_opt(model)
    plain = torch.optim.Adam(model.parameters()).state_dict()
    with pytest.raises(KeyError, match="q3r"):
        opt.load_state_dict(plain)


# ---- fused qkv: three independent operators --------------------------------------------------------

def test_fused_qkv_gets_three_independent_operators():
    d = 12
    model = make(FusedAttn, d=d)
    with torch.no_grad():                                   # give Q, K, V clearly different spectra
        g = torch.Generator().manual_seed(5)
        for i, scale in enumerate((1.0, 3.0, 0.3)):
            A = torch.randn(d, d, generator=g, dtype=torch.float64)
            model.qkv.weight[i * d:(i + 1) * d] = scale * A @ torch.diag(0.8 ** torch.arange(d, dtype=torch.float64))
    targets = select_targets(model, modules=("qkv",))
    assert [t.name for t in targets] == ["qkv[q]", "qkv[k]", "qkv[v]"]
    W0 = model.qkv.weight.detach().clone()
    lr, lmbda, rank = 0.05, 0.4, 0.3
    opt = AdamQ3R(model.parameters(), lr=lr, lmbda=lmbda, targets=targets, target_rank=rank, period=2)
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()

    ops = opt.operators()
    assert sorted(ops) == ["qkv[k]", "qkv[q]", "qkv[v]"]
    r = target_rank_ref(d, d, rank)
    Z = torch.randn(d, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for i, part in enumerate("qkv"):
        Wi = W0[i * d:(i + 1) * d]
        op = ops[f"qkv[{part}]"]
        eps, r_env, sig = fit_ref(Wi, r)
        assert op.eps == pytest.approx(eps, rel=1e-12)
        assert op.rank == r_env
        np.testing.assert_allclose(np_(op.sigma), sig, rtol=1e-12)
        np.testing.assert_allclose(np_(op(Z)), reweight_ref(Wi, eps, Z), rtol=1e-10, atol=1e-12)
        # the step on this slice used this slice's own operator
        np.testing.assert_allclose(np_(model.qkv.weight[i * d:(i + 1) * d]),
                                   np_(Wi) - lr * lmbda * reweight_ref(Wi, eps, Wi), rtol=1e-12, atol=1e-14)
    eps_all = [ops[f"qkv[{p}]"].eps for p in "qkv"]
    assert len(set(eps_all)) == 3
    assert not torch.allclose(ops["qkv[q]"].U.abs(), ops["qkv[k]"].U.abs())
    # a single operator on the whole 3d x d weight would be different
    whole = fit_ref(W0, target_rank_ref(3 * d, d, rank))[0]
    assert all(abs(e - whole) > 1e-6 for e in eps_all)


# ---- against the float64 reference loop of Algorithm 2 ---------------------------------------------

def _reference_run(model, steps, **kw):
    names = [n for n, _ in model.named_parameters()]
    init = [np_(p) for _, p in model.named_parameters()]
    regularized = [n in ("fc1.weight", "fc2.weight") for n in names]

    def grad_fn(params, t):
        ps = [torch.tensor(p, requires_grad=True) for p in params]
        P = dict(zip(names, ps))
        x, y = batch(model, t)
        out = F.linear(torch.tanh(F.linear(x, P["fc1.weight"], P["fc1.bias"])), P["fc2.weight"], P["fc2.bias"])
        F.mse_loss(out, y).backward()
        return [p.grad.numpy() for p in ps]

    history = []
    final = adamq3r_ref(init, grad_fn, steps, regularized=regularized, history=history, **kw)
    return dict(zip(names, final)), history


def _run_both(svd, d_in, d_h, steps=12, period=3, target_rank=0.5, lr=1e-2, lmbda=1.0, device="cpu", **kw):
    model = make(d_in=d_in, d_h=d_h)
    ref, history = _reference_run(model, steps, target_rank=target_rank, lr=lr, lmbda=lmbda, period=period,
                                  betas=(0.9, 0.999), delta=1e-8)
    model = model.to(device)
    opt = tiny_opt(model, lr=lr, lmbda=lmbda, period=period, target_rank=target_rank, svd=svd, **kw)
    eps_seen = []
    for t in range(steps):
        x, y = batch(model, t)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        eps_seen.append([opt.operators()[n].eps for n in ("fc1", "fc2")])
    got = {n: np_(p) for n, p in model.named_parameters()}
    # how far Q3R moves the weights (so the tolerance below means something)
    plain, _ = _reference_run(make(d_in=d_in, d_h=d_h), steps, target_rank=target_rank, lr=lr, lmbda=0.0,
                              period=period)
    return got, ref, plain, history, eps_seen


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_matches_reference_algorithm_exact_svd(device):
    got, ref, plain, history, eps_seen = _run_both("exact", d_in=10, d_h=16, device=device)
    for n in ref:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-10, atol=1e-12 * np.abs(ref[n]).max())
    for n in ("fc1.weight", "fc2.weight"):
        assert _rel(plain[n], ref[n]) > 1e-2                 # Q3R makes a visible difference
    for t, (_, eps_ref, _) in enumerate(history):
        assert eps_seen[t][0] == pytest.approx(eps_ref[0], rel=1e-12)
        assert eps_seen[t][1] == pytest.approx(eps_ref[2], rel=1e-12)
    assert history[-1][1][0] < history[0][1][0]              # eps fell over training


DEFERRED = pytest.mark.xfail(reason="by design (bank.py): on an accelerator a grown r_env is acted on only "
                                     "at the NEXT reweighting (no host sync), so with oversample=0 the operator "
                                     "is cut to the old width for one period")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[CUDA, DEFERRED])])
def test_matches_reference_algorithm_exact_svd_r_env_above_width(device):
    """Small oversample: r_env outgrows the carried width (target 2, r_env up to 5 here);
    the result must not change."""
    got, ref, _, _, _ = _run_both("exact", d_in=24, d_h=30, target_rank=2, lr=3e-2, lmbda=0.2, oversample=0,
                                  device=device)
    for n in ref:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-10, atol=1e-12 * np.abs(ref[n]).max())


# Stated tolerance of the default warm-started SVD (one subspace iteration per reweighting,
# oversample 8) on this run: max |W - W_ref| / max |W_ref| after 12 steps, and the relative
# error of eps. Measured: 1.9e-4 and 1e-3 (a random init has a flat spectrum, the worst case
# for subspace iteration); Q3R itself moves the weights by ~1e-1 relative here.
WARM_WEIGHT_RTOL = 5e-4
WARM_EPS_RTOL = 3e-3


def test_matches_reference_algorithm_warm_svd():
    # fc1 is 40 x 32 at target rank 3: the bank carries 12 of 32 columns, so warm != exact
    got, ref, plain, history, eps_seen = _run_both("warm", d_in=32, d_h=40, target_rank=3)
    for n in ref:
        assert _rel(got[n], ref[n]) < WARM_WEIGHT_RTOL, (n, _rel(got[n], ref[n]))
    for n in ("fc1.weight", "fc2.weight"):
        assert _rel(plain[n], ref[n]) > 100 * WARM_WEIGHT_RTOL
    for t, (_, eps_ref, _) in enumerate(history):
        assert eps_seen[t][0] == pytest.approx(eps_ref[0], rel=WARM_EPS_RTOL)
        assert eps_seen[t][1] == pytest.approx(eps_ref[2], rel=WARM_EPS_RTOL)


@pytest.mark.parametrize("svd", ["exact", "warm"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_operators_after_weights_grow(svd, device):
    """Singular values that grew between reweightings stay above the old eps (eps never
    increases), so r_env jumps past the target rank; the next reweighting must follow
    Algorithm 1 exactly: eps = min(eps_old, sigma_{r+1}), all sigma_i > eps kept."""
    model = make(d_in=30, d_h=40, device=device)
    opt = tiny_opt(model, lmbda=0.5, period=3, target_rank=2, svd=svd)
    train(model, opt, 3)
    eps_old = {n: op.eps for n, op in opt.operators().items()}
    with torch.no_grad():                        # a big move of the weights (e.g. a large task gradient)
        model.fc1.weight.mul_(3.0)
    x, y = batch(model, 3)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    W = model.fc1.weight.detach().clone()
    opt.step()                                   # t = 3: reweights at W
    op = opt.operators()["fc1"]
    eps, r_env, sig = fit_ref(W, 2, eps_old["fc1"])
    assert r_env > 10
    assert op.eps == pytest.approx(eps, rel=1e-12)
    assert op.rank == r_env
    np.testing.assert_allclose(np_(op(W)), reweight_ref(W, eps, W), rtol=1e-9, atol=1e-12)


# ---- weight decay ------------------------------------------------------------------------------

def test_weight_decay_only_hits_non_regularized_params():
    model = make()
    before = weights(model)
    lr, wd = 0.1, 0.2
    opt = tiny_opt(model, lr=lr, weight_decay=wd, lmbda=0.0)
    for _ in range(3):
        opt.zero_grad()
        (0.0 * sum(p.sum() for p in model.parameters())).backward()
        opt.step()
    after = weights(model)
    assert torch.equal(after["fc1.weight"], before["fc1.weight"])
    assert torch.equal(after["fc2.weight"], before["fc2.weight"])
    for n in ("fc1.bias", "fc2.bias"):
        torch.testing.assert_close(after[n], before[n] * (1 - lr * wd) ** 3, rtol=1e-14, atol=0)


def test_weight_decay_does_not_add_to_the_q3r_step():
    model = make()
    W0 = model.fc1.weight.detach().clone()
    lr, wd, lmbda = 0.1, 0.2, 0.3
    opt = tiny_opt(model, lr=lr, weight_decay=wd, lmbda=lmbda, target_rank=0.5)
    opt.zero_grad()
    (0.0 * sum(p.sum() for p in model.parameters())).backward()
    opt.step()
    eps = fit_ref(W0, target_rank_ref(16, 10, 0.5))[0]
    np.testing.assert_allclose(np_(model.fc1.weight), np_(W0) - lr * lmbda * reweight_ref(W0, eps, W0),
                               rtol=1e-12, atol=1e-14)


def backward_both(m1, m2, t):
    """The same loss, on the same batch, backpropagated through both twin models."""
    for m in (m1, m2):
        x, y = batch(m, t)
        m.zero_grad()
        F.mse_loss(m(x), y).backward()


def test_non_regularized_params_match_adamw():
    m1, m2 = make(), make()
    opt1 = torch.optim.AdamW([m1.fc1.bias, m1.fc2.bias], lr=1e-2, weight_decay=0.1)
    opt2 = tiny_opt(m2, lr=1e-2, weight_decay=0.1, lmbda=0.5, target_rank=0.5)
    for t in range(5):
        backward_both(m1, m2, t)
        opt1.step()
        opt2.step()
        with torch.no_grad():                       # keep m1's weights in step with m2's
            m1.fc1.weight.copy_(m2.fc1.weight)
            m1.fc2.weight.copy_(m2.fc2.weight)
    torch.testing.assert_close(m1.fc1.bias, m2.fc1.bias, rtol=0, atol=0)
    torch.testing.assert_close(m1.fc2.bias, m2.fc2.bias, rtol=0, atol=0)


# ---- param groups ------------------------------------------------------------------------------

def test_param_group_overrides():
    m1, m2 = make(), make()
    adam = torch.optim.Adam([m1.fc1.weight, m1.fc1.bias], lr=1e-2)
    groups = [{"params": [m2.fc1.weight, m2.fc1.bias], "lmbda": 0.0},
              {"params": [m2.fc2.weight, m2.fc2.bias], "lmbda": 0.5, "period": 2}]
    targets = [Target(m2.fc1.weight, "fc1"), Target(m2.fc2.weight, "fc2")]
    opt = AdamQ3R(groups, lr=1e-2, targets=targets, target_rank=0.5)
    assert opt.param_groups[0]["period"] == 5 and opt.param_groups[1]["period"] == 2
    for t in range(4):
        backward_both(m1, m2, t)
        adam.step()
        opt.step()
        with torch.no_grad():
            m1.fc2.weight.copy_(m2.fc2.weight)
            m1.fc2.bias.copy_(m2.fc2.bias)
    assert torch.equal(m1.fc1.weight, m2.fc1.weight)         # lmbda = 0 group: plain Adam
    assert sorted(opt.operators()) == ["fc2"]


# ---- argument validation -------------------------------------------------------------------------

@pytest.mark.parametrize("kw, shown", [
    ({"lr": -1e-3}, "-0.001"),
    ({"lr": float("nan")}, "nan"),
    ({"lmbda": -0.1}, "-0.1"),
    ({"lmbda": float("nan")}, "nan"),
    ({"period": 0}, "0"),
    ({"period": -2}, "-2"),
    ({"period": 2.5}, "2.5"),
    ({"period": True}, "True"),
    ({"target_rank": 0.0}, "0.0"),
    ({"target_rank": 1.5}, "1.5"),
    ({"target_rank": -0.2}, "-0.2"),
    ({"target_rank": 0}, "0"),
    ({"target_rank": True}, "True"),
    ({"target_rank": "high"}, "high"),
    ({"target_rank": 100}, "100"),                  # an int rank above min(d1, d2) - 1
])
def test_bad_arguments_raise_naming_the_value(kw, shown):
    model = make()
    with pytest.raises(ValueError) as info:
        tiny_opt(model, **kw)
    assert shown in str(info.value)


def test_bad_group_value_raises():
    model = make()
    with pytest.raises(ValueError, match="-1"):
        AdamQ3R([{"params": model.parameters(), "lmbda": -1.0}], targets=[model.fc1])


def test_target_outside_the_optimizer_raises():
    model = make()
    with pytest.raises(ValueError, match="fc1"):
        AdamQ3R(model.fc2.parameters(), targets=[Target(model.fc1.weight, "fc1")])


def test_bad_svd_mode_raises():
    model = make()
    with pytest.raises(ValueError, match="fast"):
        tiny_opt(model, svd="fast")

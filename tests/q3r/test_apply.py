"""StepBuffers.descend (apply.py) against W - scale R(W) from the float64 reference; its key (the bank's
``_Group.fit``) is a plain int here."""
import torch

from q3r.apply import StepBuffers
from q3r.bank import OperatorBank
from q3r.functional import shift
from q3r.targets import Target

from tests.reference import reweight_ref


def factors(G, d1, d2, k, seed):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(G, d1, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(G, d2, k, generator=g, dtype=torch.float64)).Q
    sigma = torch.rand(G, k, generator=g, dtype=torch.float64).sort(-1, descending=True).values + 0.1
    eps = sigma[:, k // 2]                                   # half the columns above eps, half with s = 0
    Wp = U @ torch.diag_embed(sigma) @ V.mT                  # the expansion points W' (G, d1, d2)
    return U, V, shift(sigma, eps), (Wp, eps)


def expected(W, point, scale):
    Wp, eps = point
    return torch.stack([W[i] - scale * torch.from_numpy(reweight_ref(Wp[i], float(eps[i]), W[i]))
                        for i in range(W.shape[0])])



def test_descend_matches_reference_and_follows_new_operators():
    for d1, d2 in ((7, 5), (5, 9)):
        buffers = StepBuffers()
        W = torch.randn(3, d1, d2, dtype=torch.float64)
        U, V, s, point = factors(3, d1, d2, 4, seed=d1)
        for step in range(2):                                # the fixed halves reused
            want = expected(W, point, 0.3)
            buffers.descend(W, U, V, s, 0.3, 1)
            torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)
        U2, V2, s2, point = factors(3, d1, d2, 3, seed=d1 + 1)  # refitted: new tensors, fewer columns
        want = expected(W, point, 0.3)
        buffers.descend(W, U2, V2, s2, 0.3, 2)
        torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)
        U3, V3, s3, point = factors(3, d1, d2, 3, seed=d1 + 2)  # the same shapes, written into the same tensors
        U2.copy_(U3), V2.copy_(V3), s2.copy_(s3)
        want = expected(W, point, 0.3)
        buffers.descend(W, U2, V2, s2, 0.3, 3)
        torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)


def test_descend_keeps_its_buffers_while_the_key_is_unchanged():
    """The point of StepBuffers: X and Y are allocated, and their fixed halves written, once per refit."""
    buffers = StepBuffers()
    W = torch.randn(3, 7, 5, dtype=torch.float64)
    U, V, s, point = factors(3, 7, 5, 4, seed=3)
    buffers.descend(W, U, V, s, 0.3, 10 ** 6)
    X, Y = buffers._X, buffers._Y
    want = expected(W, point, 0.3)
    buffers.descend(W, U, V, s, 0.3, int("1000000"))  # an equal key that is another object
    assert buffers._X is X and buffers._Y is Y, "X and Y were allocated again under an unchanged key"
    torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)


def test_descend_rewrites_the_buffers_for_operators_retyped_in_place():
    """U, V, s given a new dtype through ``.data`` (as ``Module._apply`` does) leave the key as it was;
    the buffers follow the weight's dtype all the same."""
    buffers = StepBuffers()
    W = torch.randn(3, 7, 5, dtype=torch.float64)
    U, V, s, point = factors(3, 7, 5, 4, seed=4)
    buffers.descend(W, U, V, s, 0.3, 1)
    for t in (U, V, s):
        t.data = t.data.float()
    W32 = W.float()
    buffers.descend(W32, U, V, s, 0.3, 1)
    assert buffers._X.dtype == torch.float32
    torch.testing.assert_close(W32.double(), expected(W, point, 0.3), rtol=1e-5, atol=1e-5)


def test_the_bank_starts_a_new_fit_whenever_a_groups_operators_are_set():
    """``_Group.fit`` is descend's key: every assignment to U, V, s or k_apply (a refresh, a loaded
    state, another rank's message) moves it, and nothing else does; a stale key would apply old
    operators to the weights silently."""
    params = [torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64)) for _ in range(2)]
    bank = OperatorBank([Target(p, f"w{i}") for i, p in enumerate(params)], target_rank=2)
    bank.refresh()
    g = bank.groups[0]
    for name in ("U", "V", "s", "k_apply"):
        before = g.fit
        setattr(g, name, getattr(g, name))
        assert g.fit == before + 1, name
    before = g.fit
    g.width, g.eps, g.sigma = g.width, g.eps, g.sigma
    assert g.fit == before
    before = g.fit
    bank.refresh()
    assert g.fit > before

"""StepBuffers.descend (apply.py) against W - scale R(W) from the float64 reference."""
import torch

from q3r.apply import StepBuffers, _same
from q3r.functional import shift

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


def key(U, V, s):
    return (U, U._version, V, V._version, s, s._version, U.shape[-1])


def test_descend_matches_reference_and_follows_new_operators():
    for d1, d2 in ((7, 5), (5, 9)):
        buffers = StepBuffers()
        W = torch.randn(3, d1, d2, dtype=torch.float64)
        U, V, s, point = factors(3, d1, d2, 4, seed=d1)
        for step in range(2):                                # the fixed halves reused
            want = expected(W, point, 0.3)
            buffers.descend(W, U, V, s, 0.3, key(U, V, s))
            torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)
        U2, V2, s2, point = factors(3, d1, d2, 3, seed=d1 + 1)  # refitted: new tensors, fewer columns
        want = expected(W, point, 0.3)
        buffers.descend(W, U2, V2, s2, 0.3, key(U2, V2, s2))
        torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)
        U3, V3, s3, point = factors(3, d1, d2, 3, seed=d1 + 2)  # written into the same tensors in place
        U2.copy_(U3), V2.copy_(V3), s2.copy_(s3)              # (as a rank receives another's operators)
        want = expected(W, point, 0.3)
        buffers.descend(W, U2, V2, s2, 0.3, key(U2, V2, s2))
        torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)


def test_descend_keeps_its_buffers_while_the_key_is_unchanged():
    """The point of StepBuffers: X and Y are allocated, and their fixed halves written, once per refit."""
    buffers = StepBuffers()
    W = torch.randn(3, 7, 5, dtype=torch.float64)
    U, V, s, point = factors(3, 7, 5, 4, seed=3)
    buffers.descend(W, U, V, s, 0.3, key(U, V, s))
    X, Y = buffers._X, buffers._Y
    want = expected(W, point, 0.3)
    buffers.descend(W, U, V, s, 0.3, key(U, V, s))        # an equal key, built anew (as the bank does)
    assert buffers._X is X and buffers._Y is Y, "X and Y were allocated again under an unchanged key"
    torch.testing.assert_close(W, want, rtol=1e-12, atol=1e-12)


def test_descend_rewrites_the_buffers_for_operators_retyped_in_place():
    """U, V, s given a new dtype through ``.data`` (as ``Module._apply`` does) keep their identity and
    versions, so the key; the buffers follow the weight's dtype all the same."""
    buffers = StepBuffers()
    W = torch.randn(3, 7, 5, dtype=torch.float64)
    U, V, s, point = factors(3, 7, 5, 4, seed=4)
    before = key(U, V, s)
    buffers.descend(W, U, V, s, 0.3, before)
    for t in (U, V, s):
        t.data = t.data.float()
    assert key(U, V, s) == before
    W32 = W.float()
    buffers.descend(W32, U, V, s, 0.3, key(U, V, s))
    assert buffers._X.dtype == torch.float32
    torch.testing.assert_close(W32.double(), expected(W, point, 0.3), rtol=1e-5, atol=1e-5)


def test_same_compares_tensors_by_identity_and_the_rest_by_value():
    t = torch.zeros(2)
    k = (t, 10 ** 6, 4)
    assert _same(k, (t, int("1000000"), 4))                  # equal ints that are other objects
    assert not _same(k, (t, 10 ** 6 + 1, 4))                 # one version moved
    assert not _same(k, (t, 10 ** 6, 3))                     # k moved
    assert not _same(k, (t.clone(), 10 ** 6, 4))             # an equal tensor is another operator
    assert not _same(k, k[:2]) and not _same(k[:2], k)       # lengths differ
    assert not _same(None, k) and not _same(k, None) and not _same(None, None)

"""StepBuffers.descend (apply.py) against W - scale R(W) from the float64 reference."""
import torch

from q3r.apply import StepBuffers
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

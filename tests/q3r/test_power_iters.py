"""``power_iters`` of the warm refresh: more subspace iterations bring the warm-started subspace
closer to the exact top singular subspace (issue 23: an option that does nothing is untested).

Subspace iteration from a start V0 converges to the top-k right singular subspace with an error
that shrinks like (sigma_{k+1} / sigma_k)^(2q) after q iterations. The bank is fitted exactly on
W0, then refreshed warm on W1 (same spectrum, rotated singular subspaces); its operator's subspace
is compared with ``torch.linalg.svd`` of W1, the independent reference, in float64.
"""
import math

import torch

from q3r.bank import OperatorBank
from q3r.targets import Target

D1, D2, RANK = 40, 30, 2
SPECTRUM = torch.tensor([10.0, 9.0, 5.0, 4.6] + [4.4 * 0.97 ** i for i in range(D2 - 4)], dtype=torch.float64)


def orthonormal(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64)).Q


def sin_angle(V, V_ref) -> float:
    """sin of the largest principal angle between span(V) and span(V_ref) (orthonormal columns)."""
    return torch.linalg.matrix_norm(V - V_ref @ (V_ref.mT @ V), ord=2).item()


def warm_error(power_iters: int) -> tuple[float, int]:
    U0, V0 = orthonormal(D1, D2, 0), orthonormal(D2, D2, 1)
    weight = torch.nn.Parameter(U0 @ torch.diag(SPECTRUM) @ V0.mT)
    bank = OperatorBank([Target(weight, "w", "w")], RANK, svd="warm", power_iters=power_iters, oversample=0,
                        ritz_tol=math.inf, refine_iters=0)       # the warm answer as it is: no refinement
    bank.refresh()                                               # first fit: a full SVD of W0
    tilt = torch.linalg.matrix_exp(0.6 * (lambda A: A - A.mT)(orthonormal(D2, D2, 2)))   # a rotation
    with torch.no_grad():                                        # W1: same spectrum, right subspace rotated
        weight.copy_(U0 @ torch.diag(SPECTRUM) @ (tilt @ V0).mT)
    bank.refresh()
    assert bank.fits["svd"] == 1, "the second refresh must be warm, not a full SVD"
    op = bank.operators()["w"]
    k = op.V.shape[1]
    _, S, Vh = torch.linalg.svd(weight.detach(), full_matrices=False)
    return sin_angle(op.V, Vh[:k].mT), k


def test_more_power_iterations_bring_the_warm_subspace_closer_to_the_exact_one():
    errors = {q: warm_error(q) for q in (1, 2, 4)}
    ks = {k for _, k in errors.values()}
    assert ks == {RANK}, errors                   # r_env = 2 columns compared each time
    e1, e2, e4 = (errors[q][0] for q in (1, 2, 4))
    assert e1 > 1e-2, errors                      # one iteration is visibly off on this spectrum
    assert e2 < 0.5 * e1 and e4 < 0.1 * e1, errors  # (5/9)^2 per iteration, at least

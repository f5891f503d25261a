"""A slow, independent float64 reference of Q3R, written straight from the paper.

Used only by the tests. Everything here works on numpy float64 arrays with FULL SVDs and
dense matrices, and shares no code or formula with the ``q3r`` package:

- f_eps, the smoothed log-determinant F_eps and its gradient (eq. 1, Lemma A.2);
- the reweighting operator R_{W',eps} of Definition 4.1, built literally from the FULL
  singular bases U (d1 x d1), V (d2 x d2) with sigma_i = 0 beyond min(d1, d2);
- the Q3R value 1/2 <Z, R(Z)> (eq. 6);
- Algorithm 1 (operator update), the target rank of E.1.1, and Algorithm 2 (AdamQ3R).

Paper: Ghosh, Nguyen, Kuemmerle, "Q3R: Quadratic Reweighted Rank Regularizer for Effective
Low-Rank Training", NeurIPS 2025, arXiv 2511.04485.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def _np64(x) -> np.ndarray:
    """A float64 numpy copy of an array or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def singular_values(W) -> np.ndarray:
    """All min(d1, d2) singular values of W, descending."""
    return np.linalg.svd(_np64(W), compute_uv=False)


# ---- the smoothed log-determinant (eq. 1) and its gradient (Lemma A.2) -------------------

def f_eps(s, eps: float):
    """f_eps(s) = eps^2 log(s/eps) + eps^2/2 if s > eps, else s^2/2 (elementwise)."""
    s = np.asarray(s, dtype=np.float64)
    out = np.empty_like(s)
    above = s > eps
    out[above] = eps**2 * np.log(s[above] / eps) + eps**2 / 2.0
    out[~above] = s[~above] ** 2 / 2.0
    return out


def smoothed_logdet(W, eps: float) -> float:
    """F_eps(W) = sum_i f_eps(sigma_i(W))."""
    return float(np.sum(f_eps(singular_values(W), eps)))


def grad_smoothed_logdet(W, eps: float) -> np.ndarray:
    """grad F_eps(W) = U diag(sigma_i / max(sigma_i/eps, 1)^2) V^T (Lemma A.2)."""
    W = _np64(W)
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    d = S / np.maximum(S / eps, 1.0) ** 2
    return (U * d) @ Vt


# ---- the reweighting operator (Definition 4.1) and the Q3R value (eq. 6) -----------------

def reweight_ref(Wp, eps: float, Z) -> np.ndarray:
    """R_{W',eps}(Z) = U Sig_d1^{-1} U^T Z V Sig_d2^{-1} V^T with FULL U (d1 x d1), V (d2 x d2).

    Sig_d = diag(max(sigma_i(W')/eps, 1)) in R^{d x d}, sigma_i = 0 for i > min(d1, d2).
    Both d x d weight matrices are built densely.
    """
    Wp, Z = _np64(Wp), _np64(Z)
    d1, d2 = Wp.shape
    U, S, Vt = np.linalg.svd(Wp, full_matrices=True)     # U (d1, d1), Vt (d2, d2)
    V = Vt.T
    sig1 = np.zeros(d1)
    sig1[: S.size] = S
    sig2 = np.zeros(d2)
    sig2[: S.size] = S
    left = U @ np.diag(1.0 / np.maximum(sig1 / eps, 1.0)) @ U.T     # (d1, d1)
    right = V @ np.diag(1.0 / np.maximum(sig2 / eps, 1.0)) @ V.T    # (d2, d2)
    return left @ Z @ right


def q3r_value_ref(Wp, eps: float, Z) -> float:
    """Q3R_{W',eps}(Z) = 1/2 <Z, R_{W',eps}(Z)>."""
    Z = _np64(Z)
    return 0.5 * float(np.sum(Z * reweight_ref(Wp, eps, Z)))


# ---- target rank (E.1.1) and Algorithm 1 ------------------------------------------------

def target_rank_ref(d1: int, d2: int, p: float) -> int:
    """floor(p d1 d2 / (d1 + d2)), clamped to [1, min(d1, d2) - 1]."""
    r = math.floor(p * d1 * d2 / (d1 + d2))
    return int(min(max(r, 1), min(d1, d2) - 1))


def resolve_rank_ref(shape: Sequence[int], rank) -> int:
    """An int is an absolute rank; a float is a fraction p mapped by target_rank_ref."""
    d1, d2 = shape
    if isinstance(rank, int):
        return rank
    return target_rank_ref(d1, d2, rank)


def fit_ref(W, r_target: int, eps_old: float = math.inf):
    """Algorithm 1: eps_new = min(eps_old, sigma_{r+1}(W)), r_env = #{sigma_i > eps_new}.

    Returns (eps_new, r_env, the top r_env singular values).
    """
    S = singular_values(W)
    eps_new = min(float(eps_old), float(S[r_target]))    # sigma_{r+1}, 0-based index r
    r_env = int(np.sum(S > eps_new))
    return eps_new, r_env, S[:r_env].copy()


# ---- Algorithm 2 (AdamQ3R) ---------------------------------------------------------------

def adamq3r_ref(
    params: Sequence,
    grad_fn: Callable[[list, int], list],
    steps: int,
    *,
    regularized: Sequence[bool] | None = None,
    target_rank=0.2,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    delta: float = 1e-8,
    lmbda: float = 0.1,
    period: int = 5,
    history: list | None = None,
    eps_warmup: int = 0,
) -> list[np.ndarray]:
    """Algorithm 2 in float64, one matrix at a time, with full SVDs.

    params: initial arrays (a tiny model); regularized[k] says whether params[k] carries Q3R
    (default: every 2-D array). grad_fn(list of arrays, t) returns the task-loss gradients.
    At t mod period == 0 each regularized W is refitted (Algorithm 1, eps starts at +inf)
    and becomes the expansion point W'. Adam's moments see only the task gradient; the
    update is W <- W - lr * (m_hat / (sqrt(v_hat) + delta) + lmbda * R_t(W_t)).
    If ``history`` is a list, (t, [eps_k or None], [r_env_k or None]) is appended per step.
    ``eps_warmup`` = K (the "warmup" rule for an update that starts at zero): at the reweightings
    k < K, eps = sigma_{r+1}(W) (it may rise), after them eps = min(eps, sigma_{r+1}(W)); K = 0 is
    the paper's rule. A new eps of 0 (sigma_{r+1} of a zero matrix) is not taken: eps keeps its old
    value (+inf at first, R = identity), the library's convention for a Delta W that starts at zero.
    """
    W = [_np64(p) for p in params]
    if regularized is None:
        regularized = [w.ndim == 2 for w in W]
    beta1, beta2 = betas
    m = [np.zeros_like(w) for w in W]
    v = [np.zeros_like(w) for w in W]
    eps = [math.inf] * len(W)
    expansion = [None] * len(W)
    r_env = [None] * len(W)
    reweighting = 0
    for t in range(steps):
        if lmbda != 0 and t % period == 0:
            for k, w in enumerate(W):
                if regularized[k]:
                    r = resolve_rank_ref(w.shape, target_rank)
                    old = math.inf if reweighting < eps_warmup else eps[k]
                    new, _, _ = fit_ref(w, r, old)
                    eps[k] = new if new > 0 else eps[k]
                    r_env[k] = int(np.sum(singular_values(w) > eps[k]))
                    expansion[k] = w.copy()
            reweighting += 1
        if history is not None:
            history.append((t, [eps[k] if regularized[k] else None for k in range(len(W))],
                            [r_env[k] if regularized[k] else None for k in range(len(W))]))
        g = grad_fn([w.copy() for w in W], t)
        new = []
        for k, w in enumerate(W):
            gk = _np64(g[k])
            m[k] = beta1 * m[k] + (1 - beta1) * gk
            v[k] = beta2 * v[k] + (1 - beta2) * gk * gk
            m_hat = m[k] / (1 - beta1 ** (t + 1))
            v_hat = v[k] / (1 - beta2 ** (t + 1))
            step = m_hat / (np.sqrt(v_hat) + delta)
            if regularized[k] and lmbda != 0:
                step = step + lmbda * reweight_ref(expansion[k], eps[k], w)
            new.append(w - lr * step)
        W = new
    return W

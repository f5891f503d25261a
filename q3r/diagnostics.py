"""Per-target diagnostics: eps, r_env, Q3R value, effective rank, tail ratio.

The paper's rule of thumb: lambda is too small if the Q3R value rises in the first epochs,
too large if the model collapses in rank (accuracy near chance).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from .bank import OperatorBank
from .functional import effective_rank, tail_ratio
from .ranks import resolve_rank
from .targets import Target, as_targets
from .truncation import SpectralCache


@torch.no_grad()
def diagnostics(
    targets: Iterable[Target],
    target_rank: float | int = 0.2,
    banks: Iterable[OperatorBank] = (),
    spectra: Optional[SpectralCache] = None,
) -> dict[str, dict[str, float]]:
    """{target name: {"eff_rank", "tail_ratio", and where an operator exists "eps", "r_env", "q3r"}}.

    ``banks``: the operator banks of an ``AdamQ3R`` (``opt.banks``) or a ``Q3RPenalty``
    (``[pen.bank]``); ``spectra``: a ``SpectralCache`` to reuse instead of new SVDs.
    tail_ratio is the energy of the top r_target singular values over the total.
    """
    targets = as_targets(targets)
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        if spectra is not None:
            sigma = spectra.singular_values(t.name)
        else:
            w = t.weight.detach()
            sigma = torch.linalg.svdvals(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w)
        out[t.name] = {
            "eff_rank": float(effective_rank(sigma)),
            "tail_ratio": float(tail_ratio(sigma, resolve_rank(t.shape, target_rank))),
        }
    for bank in banks:
        if not bank.fitted:
            continue
        for g, values in bank.values(detach=True):
            r_env = (g.s < 0).sum(-1).tolist()
            for i, t in enumerate(g.targets):
                if t.name in out:
                    out[t.name].update(eps=float(g.eps[i]), r_env=int(r_env[i]), q3r=float(values[i]))
    return out


def flatten(diag: dict[str, dict[str, float]], prefix: str = "diag") -> dict[str, float]:
    """{"diag/<target>/<key>": value} plus means over targets as "diag/mean/<key>"."""
    flat = {f"{prefix}/{name}/{k}": v for name, d in diag.items() for k, v in d.items()}
    keys = sorted({k for d in diag.values() for k in d})
    for k in keys:
        vals = [d[k] for d in diag.values() if k in d]
        flat[f"{prefix}/mean/{k}"] = sum(vals) / len(vals)
    return flat

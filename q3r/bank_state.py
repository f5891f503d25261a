"""An OperatorBank's state_dict: every target's operator by target name.

Each entry carries its group's host values (width, leading columns applied, an accelerator's
pending answers), so a resume is identical. A group on load may gather targets that were saved
in different groups (a bank shared out over another number of ranks: ``distributed.py``); their
operators are then padded with zero columns to the widest (a zero singular value gives s = 0, a
column that contributes nothing) and the group takes the largest width and column count.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .functional import shift
from .group import _Done


def bank_state(bank) -> dict:
    state = {}
    for g in bank.groups:
        lagged, unconverged = None, [False] * len(g.targets)
        if g.pending is not None:                              # keep the answers, so a resume is identical
            host, flags, _, event = g.pending
            event.synchronize()
            lagged, unconverged = int(host), flags.tolist()
        for i, t in enumerate(g.targets):
            entry = {"eps": g.eps[i].clone(), "eps_first": g.eps_first[i].clone(), "width": g.width,
                     "reweightings": bank.reweightings,
                     "k_apply": g.k_apply, "pending": lagged, "unconverged": unconverged[i]}
            if g.U is not None:
                entry.update(U=g.U[i].clone(), sigma=g.sigma[i].clone(), V=g.V[i].clone())
            state[t.name] = entry
    return state


def load_bank_state(bank, state: dict) -> None:
    missing = [t.name for t in bank.targets if t.name not in state]
    if missing:
        raise KeyError(f"Q3R state has no operator for targets {missing}")
    bank.reweightings = int(state[bank.targets[0].name].get("reweightings", 0)) if bank.targets else 0
    for g in bank.groups:
        entries = [state[t.name] for t in g.targets]
        ref = g.stacked()
        g.width = max(int(e["width"]) for e in entries)
        g.eps = torch.stack([torch.as_tensor(e["eps"]) for e in entries]).to(ref.device, ref.dtype)
        g.eps_first = torch.stack([torch.as_tensor(e.get("eps_first", math.inf)) for e in entries]
                                  ).to(ref.device, ref.dtype)
        lagged = [e["pending"] for e in entries if e.get("pending") is not None]
        flags = torch.tensor([bool(e.get("unconverged", False)) for e in entries])
        infinite = torch.isinf(g.eps).cpu()
        g.pending = (torch.tensor(max(lagged)), flags, infinite, _Done()) if lagged else None
        g.answers = None
        g.fresh = torch.nonzero(infinite).flatten().tolist()
        g.k_apply = max(int(e.get("k_apply", g.width)) for e in entries)
        if all("U" in e for e in entries):
            cols = max(e["sigma"].shape[-1] for e in entries)
            g.U, g.sigma, g.V = (
                torch.stack([F.pad(e[k], (0, cols - e["sigma"].shape[-1])) for e in entries]).to(ref.device, ref.dtype)
                for k in ("U", "sigma", "V")
            )
            g.s = shift(g.sigma, g.eps)
        else:
            g.U = g.sigma = g.V = g.s = None

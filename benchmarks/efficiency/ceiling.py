"""The best any search could score on a table by a fraction of its epochs (``sweep_efficiency.py bound``).

A trial counts once it has run to its end. With ``slots`` trials at once and runs of ``epochs`` epochs, a trial
that ends by ``spend`` epochs was among the first ``spend // epochs + slots - 1`` trials started (the j-th starts
only after j - slots others ended), and at most ``spend // epochs`` have ended (``reachable``), whatever the
recorded times. Their techniques are fixed by the sweep's interleaving (``TechniqueSearch``), and each
technique's study learns only from its own trials, so a trial that is the first of its technique carries no
learning at all. ``floor`` is the lowest regret and the highest hypervolume ratio any choice of those trials'
configurations could reach, however their seeds and times fall: the regret of the best configuration of a
reachable technique recommended alone, and the front of the best ``spend // epochs`` configurations.
"""
from __future__ import annotations

import itertools
import math

from tuning.analysis.records import TrialRecord
from tuning.spec.sweep import SweepSpec

from .confidence import BUDGETS, mean_regret
from .scores import hv_ratio


def first_techniques(spec: SweepSpec, k: int) -> list[str]:
    """The techniques of the sweep's first ``k`` trials, as its searcher hands them out."""
    from tuning.spec.space import split_config
    from tuning.sweep.searcher import make_searcher

    searcher, _ = make_searcher(spec)
    return [split_config(searcher.suggest(str(i)))[0] for i in range(min(k, spec.total_samples))]


def reachable(spend: float, epochs: int, slots: int) -> tuple[int, int]:
    """(trials started early enough to have ended by ``spend``, the most that can have ended by then)."""
    ended = int(spend + 1e-9) // epochs
    return (ended + slots - 1 if ended else 0), ended


MAX_CHOICES = 200_000       # sets of configurations whose hypervolume ``floor`` tries: about 2.5 minutes here


def floor(means: dict[tuple, TrialRecord], techniques: list[str], ended: int, budgets=BUDGETS) -> dict:
    """The best scores of ``ended`` trials of ``techniques`` (one configuration each, any of its technique's,
    judged by its mean): {"regret@b": lowest regret, "hv_ratio": highest ratio, "configs": the front reaching it}.
    The hypervolume is maximised by trying every set, so a large table at a late fraction is refused (ValueError)."""
    grid = list(means.values())
    pool = [key for key in means if key[0] in techniques]
    sets = sum(math.comb(len(pool), n) for n in range(1, ended + 1))
    if sets > MAX_CHOICES:
        raise ValueError(f"{sets:.3g} sets of up to {ended} of {len(pool)} configurations to try, more than "
                         f"{MAX_CHOICES:,}: the exact bound is for small tables (fewer configurations or an earlier "
                         f"fraction)")
    out = {}
    for b in budgets:
        out[f"regret@{b:g}"] = min((mean_regret([means[k]], means, b) for k in pool), default=mean_regret([], means, b))
    count = {t: techniques.count(t) for t in set(techniques)}
    best, front = 0.0, []
    for n in range(1, ended + 1):
        for combo in itertools.combinations(pool, n):
            if any(sum(k[0] == t for k in combo) > c for t, c in count.items()):
                continue                              # more configurations of a technique than its trials
            h = hv_ratio([means[k] for k in combo], grid)
            if h > best + 1e-12:
                best, front = h, list(combo)
    out["hv_ratio"] = best
    out["configs"] = [(k[0], dict(k[1])) for k in front]
    return out


def bound(means: dict[tuple, TrialRecord], spec: SweepSpec, total: float, epochs: int,
          fractions=(0.1, 0.25, 0.5)) -> dict:
    """Per fraction of ``total`` epochs: the trials that can have ended, their techniques, how many of them come
    after an earlier trial of their technique (``learned``: only those can carry what a study learned), the
    floor over them, and the floor over the same number of trials of any techniques (what a prior on which
    techniques go first could reach)."""
    out = {}
    for f in fractions:
        started, ended = reachable(f * total, epochs, spec.max_concurrent)
        if not ended:
            out[f"{f:g}"] = {"ended": 0}
            continue
        techniques = first_techniques(spec, started)
        learned = sum(t in techniques[:i] for i, t in enumerate(techniques))
        out[f"{f:g}"] = {"ended": ended, "started": started, "techniques": techniques, "learned": learned}
        try:
            out[f"{f:g}"].update(floor=floor(means, techniques, ended),
                                 any_techniques=floor(means, list(spec.spaces) * ended, ended))
        except ValueError as e:                     # too many sets to try at this fraction: say so, go on
            out[f"{f:g}"]["refused"] = str(e)
    return out


def lines(result: dict) -> list[str]:
    """``bound``'s result as text."""
    def one(r):
        regrets = ", ".join(f"{k} >= {r[k]:.3f}" for k in r if k.startswith("regret@"))
        front = " + ".join(f"{t} {' '.join(f'{k}={v:g}' for k, v in p.items())}" for t, p in r["configs"])
        return f"{regrets}, HV ratio <= {r['hv_ratio']:.3f} ({front})"
    out = []
    for f, b in result.items():
        if not b["ended"]:
            out.append(f"at {f}: no trial can have ended")
            continue
        head = (f"at {f}: at most {b['ended']} trials ended, of the first {b['started']} "
                f"({', '.join(b['techniques'])}; {b['learned']} after an earlier trial of its technique): ")
        if "refused" in b:
            out.append(head + f"not bounded: {b['refused']}")
            continue
        out.append(head + one(b["floor"]))
        out.append(f"  the same number of trials of any techniques: {one(b['any_techniques'])}")
    return out

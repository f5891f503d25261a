"""What any search could score on the table before it has learned anything (``sweep_efficiency.py bound``).

With ``max_concurrent`` slots, runs of the table's length and none stopped early, the trials ended by a fraction
of the grid's epochs are the sweep's first ``k`` (``ended_by``). Their techniques are fixed by the sweep's
interleaving (``TechniqueSearch``), and each technique's study learns only from its own trials: where each of
the ``k`` is the first of its technique, no searcher's learning reaches any of them, and their configurations
are the searchers' first guesses. ``first_choices`` scores every choice of those
configurations, over every seed draw, with the replay's scores (the regret of ``recommend`` against the means,
the hypervolume ratio of the means): the best any searcher could reach there, and which choice reaches it.
ASHA stops nothing among them when each technique has fewer than ``min_samples`` of them.
"""
from __future__ import annotations

import itertools
import statistics
from typing import Optional

from tuning.analysis.records import TrialRecord
from tuning.spec.sweep import SweepSpec

from .confidence import BUDGETS, final_metrics, mean_regret, seeds_by_config
from .scores import hv_ratio
from .table import Run


def first_techniques(spec: SweepSpec, k: int) -> list[str]:
    """The techniques of the sweep's first ``k`` trials, as its searcher hands them out."""
    from tuning.sweep.searcher import make_searcher
    from tuning.spec.space import split_config

    searcher, _ = make_searcher(spec)
    return [split_config(searcher.suggest(str(i)))[0] for i in range(k)]


def ended_by(total: float, fraction: float, epochs: int, slots: int) -> int:
    """Trials ended by ``fraction`` of ``total`` epochs when ``slots`` trials of ``epochs`` run at once and none
    is stopped early: whole rounds of ``slots`` trials (a trial's spend counts every trial's epochs)."""
    return slots * (int(fraction * total + 1e-9) // (slots * epochs))


def first_choices(runs: list[Run], techniques: list[str], budgets=BUDGETS, means: Optional[dict] = None) -> list[dict]:
    """Every choice of configurations for trials of ``techniques`` (one each, in order), scored over every seed
    draw: {"configs", "hv_ratio", "regret@b": {"min", "median", "max"}}, best (lowest worst-case regrets) first."""
    from .confidence import mean_records

    means = means or mean_records(runs)
    by = seeds_by_config(runs)
    grid = list(means.values())
    options = [[key for key in by if key[0] == t] for t in techniques]
    out = []
    for configs in itertools.product(*options):
        row = {"configs": [(t, dict(p)) for t, p in configs], "hv_ratio": hv_ratio([means[c] for c in configs], grid)}
        for b in budgets:
            regrets = []
            for draw in itertools.product(*(by[c] for c in configs)):
                found = [TrialRecord(trial_id=str(i), technique=c[0], params=dict(c[1]), status="completed",
                                     epoch=len(r.rows), metrics=final_metrics(r))
                         for i, (c, r) in enumerate(zip(configs, draw))]
                regrets.append(mean_regret(found, means, b))
            row[f"regret@{b:g}"] = {"min": min(regrets), "median": statistics.median(regrets), "max": max(regrets)}
        out.append(row)
    return sorted(out, key=lambda r: (tuple(r[f"regret@{b:g}"]["max"] for b in budgets), -r["hv_ratio"]))


def bound(runs: list[Run], spec: SweepSpec, total: float, epochs: int, fractions=(0.25,)) -> dict:
    """Per fraction: how many trials have ended, their techniques, how many of them came after an earlier trial of
    their technique (``learned``: only those can carry what a study learned), and the best and worst choices of
    their configurations; and the best choice of first trials of any distinct techniques (what a prior on which
    techniques go first could reach)."""
    out = {}
    for f in fractions:
        k = ended_by(total, f, epochs, spec.max_concurrent)
        if k == 0:
            out[f"{f:g}"] = {"ended": 0}
            continue
        techniques = first_techniques(spec, k)
        rows = first_choices(runs, techniques)
        anywhere = [r for ts in itertools.combinations(sorted(set(spec.spaces)), min(k, len(spec.spaces)))
                    for r in first_choices(runs, list(ts))]
        anywhere.sort(key=lambda r: (tuple(r[f"regret@{b:g}"]["max"] for b in BUDGETS), -r["hv_ratio"]))
        out[f"{f:g}"] = {"ended": k, "techniques": techniques, "learned": k - len(set(techniques)),
                         "best": rows[0], "worst": rows[-1],
                         "max_hv_ratio": max(r["hv_ratio"] for r in rows),
                         "any_techniques": {"best": anywhere[0],
                                            "max_hv_ratio": max(r["hv_ratio"] for r in anywhere)}}
    return out


def lines(result: dict) -> list[str]:
    """``bound``'s result as text, one line per fraction and choice."""
    def one(r):
        configs = " + ".join(f"{t} {' '.join(f'{k}={v:g}' for k, v in p.items())}" for t, p in r["configs"])
        regrets = ", ".join(f"{k} {r[k]['min']:.3f}-{r[k]['max']:.3f}" for k in r if k.startswith("regret@"))
        return f"HV {r['hv_ratio']:.3f}, {regrets} (over seed draws): {configs}"
    out = []
    for f, b in result.items():
        if not b["ended"]:
            out.append(f"at {f}: no trial has ended")
            continue
        out.append(f"at {f}: {b['ended']} trials ended ({', '.join(b['techniques'])}), {b['learned']} of them after an "
                   f"earlier trial of their technique; HV ratio at most {b['max_hv_ratio']:.3f}")
        out.append(f"  best choice: {one(b['best'])}")
        out.append(f"  worst choice: {one(b['worst'])}")
        out.append(f"  any {b['ended']} techniques first: HV ratio at most {b['any_techniques']['max_hv_ratio']:.3f}; "
                   f"best {one(b['any_techniques']['best'])}")
    return out

"""A table of several seeds per configuration, and replays scored with confidence.

The table's configurations are judged by their mean over seeds (``mean_records``); the replay lets each
simulated trial meet one seed's curve (``draw_seed``), as a real sweep meets one seed's noise. A replay is
scored at fractions of the grid's epochs (``score_seeded``): the hypervolume ratio and the regret of the
recommendation, both with the found configurations' means, and whether each technique's best configuration
(by mean objective) had been trained to its end. ``bootstrap`` gives a median and a 95% interval over replay
seeds; ``seed_std`` the table's own noise, the median over configurations of the seed-to-seed std.
"""
from __future__ import annotations

import random
import statistics
from typing import Iterable, Sequence

import numpy as np

from tuning.analysis.records import COMPLETED, SEARCH, TrialRecord
from tuning.analysis.recommend import recommend
from tuning.trial.metrics import acc_key

from .scores import found_by, scored_metrics
from .table import Run
from .trainable import config_key

FRACTIONS = (0.1, 0.25, 0.5)
BUDGETS = (0.1, 0.2)


def seeds_by_config(runs: Iterable[Run]) -> dict[tuple, list[Run]]:
    """The grid's runs (role trial) by configuration key, each configuration's runs in seed order."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.role == SEARCH:
            out.setdefault(config_key(r.technique, r.params), []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"the table has two runs of {rs[0].technique} {rs[0].params} with the same seed: {seeds}")
    return out


def draw_seed(replay_seed: int, occurrence: int, key: tuple, n: int) -> int:
    """Which of a configuration's ``n`` seed curves the replay's ``occurrence``-th trial of it (0 for the first)
    meets: a draw fixed by (replay seed, occurrence, configuration), so two strategies replayed with the same
    seed meet the same noise on the configurations they both try, and a configuration tried again meets a new
    draw."""
    if n < 1:
        raise ValueError(f"draw_seed needs at least one curve, got n={n}")
    return random.Random(f"{replay_seed}|{occurrence}|{key!r}").randrange(n)


def final_metrics(run: Run) -> dict:
    return scored_metrics(run.rows[-1])


def mean_record(key: tuple, runs: Sequence[Run]) -> TrialRecord:
    """The configuration as one record: every scored metric of its runs' last rows averaged over seeds; completed
    when any seed completed (a collapsed seed counts with its final accuracy)."""
    finals = [final_metrics(r) for r in runs]
    names = [k for k in finals[0] if all(k in f for f in finals)]
    metrics = {k: statistics.fmean(float(f[k]) for f in finals) for k in names}
    status = COMPLETED if any(r.status == COMPLETED for r in runs) else runs[0].status
    first = runs[0]
    return TrialRecord(trial_id=f"mean-{first.technique}-{sorted(first.params.items())}", technique=first.technique,
                       params=dict(first.params), status=status, epoch=max(int(r.rows[-1]["epoch"]) for r in runs),
                       metrics=metrics)


def mean_records(runs: Iterable[Run]) -> dict[tuple, TrialRecord]:
    return {key: mean_record(key, rs) for key, rs in seeds_by_config(runs).items()}


def std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def budget_accuracy(run_or_record, budget: float) -> float:
    """The accuracy ``recommend`` gives one run (or record) within ``budget``; 0 when nothing fits."""
    rec = run_or_record if isinstance(run_or_record, TrialRecord) else TrialRecord(
        trial_id=run_or_record.trial_id, technique=run_or_record.technique, params=run_or_record.params,
        status=COMPLETED, epoch=int(run_or_record.rows[-1]["epoch"]), metrics=final_metrics(run_or_record))
    try:
        return recommend([rec], budget).point.accuracy
    except ValueError:
        return 0.0


def config_noise(runs: Iterable[Run], budgets: Sequence[float] = BUDGETS) -> list[dict]:
    """Per configuration: seeds, mean and std over seeds of the final objective and of the accuracy within each
    budget."""
    rows = []
    for key, rs in seeds_by_config(runs).items():
        obj = [float(final_metrics(r).get("objective", 0.0)) for r in rs]
        row = {"technique": key[0], "params": dict(key[1]), "seeds": len(rs),
               "objective": statistics.fmean(obj), "std": std(obj)}
        for b in budgets:
            accs = [budget_accuracy(r, b) for r in rs]
            row[f"acc@{b:g}"], row[f"std@{b:g}"] = statistics.fmean(accs), std(accs)
        rows.append(row)
    return rows


def seed_std(noise: list[dict], column: str = "std") -> float:
    """The table's median seed-to-seed std of ``column`` over its configurations with two seeds or more."""
    values = [r[column] for r in noise if r[column] == r[column]]
    if not values:
        raise ValueError("no configuration of the table has two seeds: its seed-to-seed std is unknown")
    return statistics.median(values)


def best_by_technique(means: dict[tuple, TrialRecord]) -> dict[str, tuple]:
    """{technique: the key of its configuration with the best mean objective}."""
    best: dict[str, tuple] = {}
    for key, rec in means.items():
        if key[0] not in best or rec.metrics.get("objective", 0.0) > means[best[key[0]]].metrics.get("objective", 0.0):
            best[key[0]] = key
    return best


def as_mean(found: Iterable[TrialRecord], means: dict[tuple, TrialRecord]) -> list[TrialRecord]:
    """The found trials with their configurations' mean metrics (and their own status and id)."""
    out = []
    for r in found:
        m = means[config_key(r.technique, r.params)]
        out.append(TrialRecord(trial_id=r.trial_id, technique=r.technique, params=r.params, status=r.status,
                               epoch=r.epoch, metrics=m.metrics))
    return out


def mean_regret(found: Sequence[TrialRecord], means: dict[tuple, TrialRecord], budget: float) -> float:
    """The best mean accuracy within ``budget`` of any configuration minus the mean accuracy, at the recommended
    level, of the configuration ``recommend`` picks from what the trials showed (one seed each)."""
    best = recommend(list(means.values()), budget).point.accuracy
    try:
        rec = recommend(list(found), budget)
    except ValueError:                          # nothing found fits the budget: nothing is recommended
        return best
    mean = means[config_key(rec.record.technique, rec.record.params)]
    return best - float(mean.metrics.get(acc_key(rec.point.retention), 0.0))


def score_seeded(finished, means: dict[tuple, TrialRecord], total: float, fractions=FRACTIONS,
                 budgets=BUDGETS) -> dict:
    """{fraction: {"hv_ratio", "regret@b"..., "found": {technique: 0/1}}} of one replay."""
    from .scores import hv_ratio

    grid = list(means.values())
    best = best_by_technique(means)
    out = {}
    for f in fractions:
        found = found_by(finished, f * total)
        ended = {config_key(r.technique, r.params) for r in found if r.status == COMPLETED}
        row = {"hv_ratio": hv_ratio(as_mean(found, means), grid)}
        for b in budgets:
            row[f"regret@{b:g}"] = mean_regret(found, means, b)
        row["found"] = {t: float(k in ended) for t, k in best.items()}
        out[f] = row
    return out


def bootstrap(values: Iterable[float], n_boot: int = 4000, level: float = 0.95, stat=np.median, seed: int = 0,
              name: str = "median") -> dict:
    """``stat`` of the sample and its percentile bootstrap interval: {name, "lo", "hi"} (numpy, resampling the
    sample with replacement ``n_boot`` times with a fixed generator)."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stats = stat(x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))], axis=1)
    tail = 50 * (1 - level)
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return {name: float(stat(x)), "lo": float(lo), "hi": float(hi)}


def summarize(per_seed: list[dict], fractions=FRACTIONS, budgets=BUDGETS, noise: list[dict] | None = None) -> dict:
    """The JSON object of one strategy: per fraction (as "0.25"), median and 95% interval over replay seeds of
    hv_ratio and regret@b, the found chance per technique (mean and interval), and the table's seed std within
    each budget next to the regrets."""
    out = {}
    for f in fractions:
        rows = [s[f] for s in per_seed]
        obj = {"hv_ratio": bootstrap(r["hv_ratio"] for r in rows)}
        for b in budgets:
            obj[f"regret@{b:g}"] = bootstrap(r[f"regret@{b:g}"] for r in rows)
            if noise:
                obj[f"seed_std@{b:g}"] = seed_std(noise, f"std@{b:g}")
        obj["found"] = {t: bootstrap((r["found"][t] for r in rows), stat=np.mean, name="chance")
                        for t in rows[0]["found"]}
        out[f"{f:g}"] = obj
    return out


def apart(a: dict, b: dict) -> bool:
    """Whether interval ``a`` lies wholly below interval ``b``."""
    return a["hi"] < b["lo"]

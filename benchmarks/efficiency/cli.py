"""``sweep_efficiency.py replay``: every strategy x seed replayed, scored, printed, drawn."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from tuning.analysis.pareto import format_table
from tuning.analysis.records import SEARCH
from tuning.spec.space import grid_points
from tuning.trial.metrics import levels

from . import scores
from .replay import config_key, grid_epochs, mean_epoch_seconds, replay, strategy_spec
from .strategies import DEFAULT_SET, same_search, sized_allocation, strategies
from .table import grid_dict, load

FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
HEADLINE = 0.25                  # the goal: >= 0.95 of the grid's hypervolume with <= 25% of its epochs
BUDGETS = (0.1, 0.2)


def grid_of(runs) -> dict:
    """The table's grid ({technique: {param: [values] or value}}); an error if it is not a full cross product."""
    grid: dict = {}
    for r in (r for r in runs if r.role == SEARCH):
        for p, v in r.params.items():
            grid.setdefault(r.technique, {}).setdefault(p, set()).add(v)
    grid = {t: {p: (sorted(v) if len(v) > 1 else next(iter(v))) for p, v in space.items()} for t, space in grid.items()}
    spec = strategy_spec(grid_dict(1, grid), 0, "grid", {"kind": "fifo"}, 1)
    have = {config_key(r.technique, r.params) for r in runs if r.role == SEARCH}
    missing = [pt for pt in grid_points(spec.spaces)
               if config_key(pt["technique"], {k.split(".", 1)[1]: v for k, v in pt.items() if k != "technique"}) not in have]
    if missing:
        raise ValueError(f"the table is not a full grid: {len(missing)} grid point(s) have no run, e.g. {missing[0]}")
    return grid


def score_run(finished, grid_recs, total: int) -> dict:
    spent = scores.total_spend(finished)
    out = {"spend": spent / total, "hv": {}, "regret": {}, "regret_end": {}}
    for f in FRACTIONS:
        out["hv"][f] = scores.hv_ratio(scores.found_by(finished, f * total), grid_recs)
    at = scores.found_by(finished, HEADLINE * total)
    for b in BUDGETS:
        out["regret"][b] = scores.regret(at, grid_recs, b)
        out["regret_end"][b] = scores.regret([x.record for x in finished], grid_recs, b)
    reach = [f for f in FRACTIONS if out["hv"][f] >= 0.95 and f <= out["spend"] + 1e-9]
    out["reach95"] = reach[0] if reach else math.nan
    return out


def quartiles(values):
    values = sorted(v for v in values if v == v)
    if not values:
        return math.nan, math.nan, math.nan
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for name, runs in results.items():
        row = {"strategy": name, "seeds": len(runs), "epochs spent": statistics.median(r["spend"] for r in runs)}
        for f in (0.1, 0.2, 0.25, 0.3):
            lo, med, hi = quartiles([r["hv"][f] for r in runs])
            row[f"HV@{f:g}"] = f"{med:.3f} [{lo:.3f},{hi:.3f}]"
        for b in BUDGETS:
            lo, med, hi = quartiles([r["regret"][b] for r in runs])
            row[f"regret@{b:g}"] = f"{med:.3f} [{lo:.3f},{hi:.3f}]"
        reach = statistics.median([r["reach95"] if r["reach95"] == r["reach95"] else math.inf for r in runs])
        row["HV>=0.95 at"] = f"{reach:g}" if reach < math.inf else "not reached"
        rows.append(row)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in results.items():
        spent = statistics.median(r["spend"] for r in runs)
        xs = [f for f in FRACTIONS if f <= spent + 1e-9] or [FRACTIONS[0]]     # a curve ends where its sweep did
        q = [quartiles([r["hv"][f] for r in runs]) for f in xs]
        line, = ax.plot(xs, [m for _, m, _ in q], marker="o", ms=3, label=name)
        ax.fill_between(xs, [lo for lo, _, _ in q], [hi for _, _, hi in q], alpha=0.15, color=line.get_color())
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.axvline(HEADLINE, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("fraction of the grid's epochs spent")
    ax.set_ylabel("hypervolume / grid's hypervolume")
    ax.set_title("Q3R sweeps replayed on the digits grid (median, quartiles over seeds)")
    ax.set_ylim(0.7, 1.01)
    ax.set_xlim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def from_json(path: Path) -> dict:
    """The per-seed scores of an earlier replay (``--json``), with their fractions and budgets as numbers."""
    results = json.loads(Path(path).read_text())["results"]
    for runs in results.values():
        for r in runs:
            for k in ("hv", "regret", "regret_end"):
                r[k] = {float(f): v for f, v in r[k].items()}
    return results


def replay_main(args, log=print) -> dict:
    import ray

    runs = load(args.table)
    if args.report_only:                   # print and draw an earlier replay's scores again
        results = from_json(args.report_only)
        args.json = None
        report(results, runs, max(int(row["epoch"]) for r in runs for row in r.rows), args, log)
        return results
    grid = grid_of(runs)
    epochs = max(int(row["epoch"]) for r in runs for row in r.rows)
    base = grid_dict(epochs, grid)
    grid_recs = scores.grid_records(runs)
    total = grid_epochs(runs)
    n_grid = sum(r.role == SEARCH for r in runs)
    scale = args.epoch_ms / 1000 / mean_epoch_seconds(runs)
    all_strategies = strategies(n_grid, epochs, fifo_fraction=args.fifo_fraction, asha_trials=args.asha_trials)
    names = args.strategies or list(DEFAULT_SET)
    unknown = [n for n in names if n not in all_strategies]
    if unknown:
        raise SystemExit(f"unknown strategy(ies) {unknown}; known: {list(all_strategies)}")
    default = all_strategies["default"]
    alias = next((n for n in names if n != "default" and same_search(all_strategies[n], default)), None)
    log(f"table {args.table}: {n_grid} grid configurations, {total} grid epochs, {len(runs) - n_grid} second-seed runs; "
        f"reports ordered by simulated time (recorded epoch seconds); real sleep {args.epoch_ms:g} ms per mean epoch")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict = {}
    started = time.perf_counter()
    try:
        for name in names:
            if name == "default" and alias:
                continue
            s = all_strategies[name]
            label = f"default ({name})" if name == alias else name
            if name == "default":
                label = f"default ({s.searcher}+{s.scheduler.get('kind')})"
            one = time.perf_counter()
            results[label] = []
            for seed in range(s.seeds or args.seeds):
                spread = sized_allocation({t: sum(r.technique == t for r in runs if r.role == SEARCH) for t in grid},
                                          s.num_samples) if s.sized else None
                spec = strategy_spec(base, seed, s.searcher, s.scheduler, s.num_samples, s.objective, spread, s.startup)
                results[label].append(score_run(replay(spec, runs, scale), grid_recs, total))
            log(f"  {label}: {len(results[label])} seed(s) in {time.perf_counter() - one:.0f} s")
    finally:
        ray.shutdown()
    log(f"replay: {sum(len(v) for v in results.values())} replays in {time.perf_counter() - started:.0f} s")
    report(results, runs, epochs, args, log)
    return results


def report(results: dict, runs, epochs: int, args, log=print) -> None:
    log("\nhypervolume ratio at fractions of the grid's epochs (median [quartiles]), regret at budgets 0.1/0.2 "
        f"of the recommendation made at {HEADLINE:.0%} of the grid's epochs, first fraction reaching 0.95:")
    log(format_table(summary_rows(results)))
    fractions = [f for f in FRACTIONS if f <= 0.4]
    log("\nmedian hypervolume ratio by fraction of grid epochs:")
    log(format_table([{"strategy": n, **{f"{f:g}": statistics.median(r["hv"][f] for r in rs) for f in fractions}}
                      for n, rs in results.items()]))
    rungs = list(range(1, epochs))
    fid = scores.rung_fidelity(runs, rungs, epochs)
    log(f"\nrung fidelity: Spearman of the objective at epoch e vs at epoch {epochs}, per technique (grid runs):")
    log(format_table([{"technique": t, **{f"e={e}": round(v, 2) for e, v in row.items()}} for t, row in fid.items()]))
    retentions = sorted({p for r in runs for p in levels(r.rows[-1])})
    noise = scores.noise_floor(runs, retentions)
    if noise:
        log("\nnoise floor: configurations trained with a second seed, |acc@p difference| over p < 1:")
        log(format_table(noise))
    if args.png:
        plot(results, args.png)
        log(f"\nfigure: {args.png}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "fidelity": fid, "noise": noise}, indent=1, default=str))
    label = next((n for n in results if n.startswith("default")), None)
    if label:
        rs = results[label]
        log(f"{label}: hypervolume ratio {statistics.median(r['hv'][HEADLINE] for r in rs):.3f} at {HEADLINE:.0%} of grid "
            f"epochs; regret@0.2 {statistics.median(r['regret'][0.2] for r in rs):.3f}")

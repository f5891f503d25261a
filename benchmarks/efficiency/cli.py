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
from .confidence import apart, as_mean, config_noise, mean_records, mean_regret, score_seeded, seed_std, summarize
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


def score_run(finished, means: dict, total: float) -> dict:
    """One replay's scores; every found configuration counts with its mean over the table's seeds."""
    grid_recs = list(means.values())
    spent = scores.total_spend(finished)
    out = {"spend": spent / total, "hv": {}, "regret": {}, "regret_end": {}}
    for f in FRACTIONS:
        out["hv"][f] = scores.hv_ratio(as_mean(scores.found_by(finished, f * total), means), grid_recs)
    at = scores.found_by(finished, HEADLINE * total)
    for b in BUDGETS:
        out["regret"][b] = mean_regret(at, means, b)
        out["regret_end"][b] = mean_regret([x.record for x in finished], means, b)
    reach = [f for f in FRACTIONS if out["hv"][f] >= 0.95 and f <= out["spend"] + 1e-9]
    out["reach95"] = reach[0] if reach else math.nan
    out["seeded"] = score_seeded(finished, means, total)
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
    """The per-seed scores of an earlier replay (``--save``), with their fractions and budgets as numbers."""
    results = json.loads(Path(path).read_text())["results"]
    for runs in results.values():
        for r in runs:
            for k in ("hv", "regret", "regret_end", "seeded"):
                r[k] = {float(f): v for f, v in r[k].items()}
    return results


def replay_main(args, log=print) -> dict:
    import ray

    runs = load(args.table)
    noise = config_noise(runs)
    epochs = max(int(row["epoch"]) for r in runs for row in r.rows)
    if args.report_only:                   # print and draw an earlier replay's scores again
        results = from_json(args.report_only)
        args.save = None
        report(results, runs, epochs, noise, args, log)
        return results
    grid = grid_of(runs)
    base = grid_dict(epochs, grid)
    means = mean_records(runs)
    total = grid_epochs(runs)
    n_grid = len(means)
    scale = args.epoch_ms / 1000 / mean_epoch_seconds(runs)
    all_strategies = strategies(n_grid, epochs, fifo_fraction=args.fifo_fraction, asha_trials=args.asha_trials,
                                spec=args.spec)
    names = args.strategies or list(DEFAULT_SET)
    unknown = [n for n in names if n not in all_strategies]
    if unknown:
        raise SystemExit(f"unknown strategy(ies) {unknown}; known: {list(all_strategies)}")
    seeds = sorted({r.seed for r in runs if r.role == SEARCH})
    log(f"table {args.table}: {n_grid} grid configurations x seeds {seeds}, {total:g} grid epochs (mean over seeds); "
        f"each simulated trial meets one seed's curve; reports ordered by simulated time; real sleep {args.epoch_ms:g} "
        f"ms per mean epoch")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict = {}
    started = time.perf_counter()
    try:
        for name in names:
            s = all_strategies[name]
            same = next((n for n in results if same_search(all_strategies[n], s)), None)
            if same:                                  # the same search: the same replays
                results[name] = results[same]
                log(f"  {name}: the same search as {same}")
                continue
            one = time.perf_counter()
            results[name] = []
            for seed in range(s.seeds or args.seeds):
                spread = sized_allocation({t: sum(k[0] == t for k in means) for t in grid}, s.num_samples) \
                    if s.sized else None
                spec = strategy_spec(base, seed, s.searcher, s.scheduler, s.num_samples, s.objective, spread, s.startup,
                                     s.start_points)
                results[name].append(score_run(replay(spec, runs, scale), means, total))
            log(f"  {name} ({s.searcher}+{s.scheduler.get('kind')}, {s.num_samples} trials): "
                f"{len(results[name])} seed(s) in {time.perf_counter() - one:.0f} s")
    finally:
        ray.shutdown()
    log(f"replay: {sum(len(v) for v in results.values())} replays in {time.perf_counter() - started:.0f} s")
    report(results, runs, epochs, noise, args, log)
    return results


def bound_main(args, log=print) -> dict:
    """``sweep_efficiency.py bound``: the best the default strategy's reachable trials could score at each
    fraction, whatever its searcher (``ceiling.bound``)."""
    from .ceiling import bound, lines

    runs = load(args.table)
    epochs = max(int(row["epoch"]) for r in runs for row in r.rows)
    means = mean_records(runs)
    s = strategies(len(means), epochs, asha_trials=args.asha_trials, spec=args.spec)["default"]
    spec = strategy_spec(grid_dict(epochs, grid_of(runs)), 0, s.searcher, s.scheduler, s.num_samples, s.objective,
                         None, s.startup, s.start_points)
    result = bound(means, spec, grid_epochs(runs), epochs)
    log(f"table {args.table}: the default's trials ({s.num_samples}, {spec.max_concurrent} at once) that can have "
        f"ended by each fraction of the grid's {grid_epochs(runs):g} epochs, and the best any choice of their "
        f"configurations could score (means over seeds), whatever the seeds and recorded times:")
    for line in lines(result):
        log(line)
    return result


def confidence_json(results: dict, noise: list[dict]) -> dict:
    """``replay --json``: {"seed_std": S, "strategies": {name: {"0.25": {"hv_ratio": {median, lo, hi}, ...}}}}."""
    multi = any(r["seeds"] > 1 for r in noise)
    return {"seed_std": seed_std(noise) if multi else math.nan,
            "strategies": {name: summarize([r["seeded"] for r in rs], noise=noise if multi else None)
                           for name, rs in results.items()}}


def ci(c: dict, key: str = "median") -> str:
    return f"{c[key]:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def report(results: dict, runs, epochs: int, noise: list[dict], args, log=print) -> dict:
    multi = any(r["seeds"] > 1 for r in noise)
    if multi:
        log("\nthe table's configurations over seeds (final objective and accuracy within budgets 0.1 / 0.2: mean, std):")
        log(format_table([{"technique": r["technique"], "params": " ".join(f"{k}={v:g}" for k, v in r["params"].items()),
                           "seeds": r["seeds"], "objective": f"{r['objective']:.3f} +- {r['std']:.3f}",
                           **{f"acc@{b:g}": f"{r[f'acc@{b:g}']:.3f} +- {r[f'std@{b:g}']:.3f}" for b in BUDGETS}}
                          for r in noise]))
    conf = confidence_json(results, noise)
    log(f"\nseed_std (median over configurations of the std over seeds): objective {conf['seed_std']:.3f}"
        + ("".join(f", acc@{b:g} {seed_std(noise, f'std@{b:g}'):.3f}" for b in BUDGETS) if multi else ""))
    log(f"\nmedian [95% bootstrap interval] over replay seeds, at fractions of the grid's epochs; regret against the "
        f"best configuration by its mean over seeds; found = chance that a technique's best configuration ran to its end:")
    rows = []
    for name, by_f in conf["strategies"].items():
        for f, c in by_f.items():
            row = {"strategy": name, "seeds": len(results[name]), "epochs": f, "HV ratio": ci(c["hv_ratio"])}
            for b in BUDGETS:
                row[f"regret@{b:g}"] = ci(c[f"regret@{b:g}"])
                if multi:
                    row[f"seed std@{b:g}"] = f"{c[f'seed_std@{b:g}']:.3f}"
            row["found"] = " ".join(f"{t}={v['chance']:.2f}" for t, v in c["found"].items())
            rows.append(row)
    log(format_table(rows))
    if "default" in conf["strategies"] and "random" in conf["strategies"]:
        d, r = conf["strategies"]["default"], conf["strategies"]["random"]
        for f in d:
            verdict = [f"{k}: " + ("default better, intervals apart" if apart(d[f][k], r[f][k]) else
                                   "random better, intervals apart" if apart(r[f][k], d[f][k]) else "intervals overlap")
                       for k in (f"regret@{b:g}" for b in BUDGETS)]
            verdict.append("hv_ratio: " + ("default better, intervals apart" if apart(r[f]["hv_ratio"], d[f]["hv_ratio"])
                                           else "random better, intervals apart" if apart(d[f]["hv_ratio"], r[f]["hv_ratio"])
                                           else "intervals overlap"))
            log(f"default vs random at {f} of the grid's epochs: " + "; ".join(verdict))
    log("\nhypervolume ratio at fractions of the grid's epochs (median [quartiles]), regret at budgets 0.1/0.2 "
        f"of the recommendation made at {HEADLINE:.0%} of the grid's epochs, first fraction reaching 0.95:")
    log(format_table(summary_rows(results)))
    rungs = list(range(1, epochs))
    fid = scores.rung_fidelity(runs, rungs, epochs)
    log(f"\nrung fidelity: Spearman of the objective at epoch e vs at epoch {epochs}, per technique (grid runs):")
    log(format_table([{"technique": t, **{f"e={e}": round(v, 2) for e, v in row.items()}} for t, row in fid.items()]))
    retentions = sorted({p for r in runs for p in levels(r.rows[-1])})
    pairs = scores.noise_floor(runs, retentions)
    if pairs:
        log("\nnoise floor: configurations trained with a second seed, |acc@p difference| over p < 1:")
        log(format_table(pairs))
    if args.png:
        plot(results, args.png)
        log(f"\nfigure: {args.png}")
    if args.save:
        args.save.write_text(json.dumps({"results": results, "fidelity": fid, "noise": noise}, indent=1, default=str))
    return conf

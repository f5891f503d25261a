"""Sweep efficiency: a tabular benchmark of Q3R sweeps on digits.

    python benchmarks/sweep_efficiency.py build     # the grid, trained once -> benchmarks/data/digits_grid.csv.gz
    python benchmarks/sweep_efficiency.py replay    # search strategies replayed against the table
    python benchmarks/sweep_efficiency.py replay --table benchmarks/data/digits_grid_seeds.csv.gz \
        --strategies default random --seeds 20 --json          # judge the default search: one JSON object
    python benchmarks/sweep_efficiency.py bound --table benchmarks/data/digits_grid_seeds.csv.gz
                                           # the best any search could score by 10%, 25%, 50% of that table
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.efficiency import table  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the grid once and write the table")
    b.add_argument("--out", type=Path, default=table.TABLE)
    b.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "efficiency")
    b.add_argument("--epochs", type=int, default=table.EPOCHS)
    b.add_argument("--cpus", type=int, default=2)
    b.add_argument("--seed", type=int, default=0, help="the trials' seed (the spec's seed)")
    b.add_argument("--grid", choices=("full", "seeds"), default=None,
                   help="full: table.GRID (the default when training); seeds: table.SEED_GRID, the configurations "
                   "trained with 3 seeds (the default with --seeded)")
    b.add_argument("--seeded", nargs="+", type=Path, default=None, metavar="TABLE",
                   help="no training: write --out from these tables' runs of the grid's configurations "
                   "(confirmations as their seed's runs)")
    b.add_argument("--only", nargs="+", default=None, help="techniques of the grid to build (default: all)")
    b.add_argument("--collapsed", action="store_true", help="build only the configurations that collapsed in --out "
                   "(with a shorter collapse patience) and merge them in")
    b.add_argument("--merge", action="store_true", help="replace those configurations' runs in --out instead of "
                   "overwriting it (no confirmation runs)")
    r = sub.add_parser("replay", help="replay search strategies against the table")
    r.add_argument("--table", type=Path, default=table.TABLE)
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--strategies", nargs="+", default=None, help="names (default: the reference set); see strategies.py")
    r.add_argument("--fifo-fraction", type=float, default=0.3, help="trials of the FIFO strategies / grid size")
    r.add_argument("--asha-trials", type=int, default=None, help="trials of the ASHA strategies (default 0.55 x grid)")
    r.add_argument("--epoch-ms", type=float, default=0.0,
                   help="also sleep this many real ms per mean recorded epoch (the simulated clock alone orders reports)")
    r.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "data" / "sweep_efficiency.png")
    r.add_argument("--report-only", type=Path, default=None, help="print and draw the scores of an earlier --json")
    r.add_argument("--smoke-test", action="store_true", help="1 seed of random+fifo (2 trials) and the default "
                   "(6 ASHA trials), nothing written")
    r.add_argument("--save", type=Path, default=ROOT / "benchmarks" / "data" / "sweep_efficiency.json",
                   help="the per-seed scores as JSON (for --report-only)")
    r.add_argument("--json", action="store_true", help="print only the confidence summary, one JSON object, on stdout "
                   "(the report goes to stderr)")
    r.add_argument("--spec", type=Path, default=table.BASE_SPEC, help="the sweep spec whose search is `default`")
    c = sub.add_parser("bound", help="the best any search could score with the trials that can have ended by each fraction")
    c.add_argument("--table", type=Path, default=table.TABLE)
    c.add_argument("--asha-trials", type=int, default=None, help="trials of the default (default 0.55 x grid)")
    c.add_argument("--spec", type=Path, default=table.BASE_SPEC)
    c.add_argument("--json", action="store_true", help="also print the result as one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.command == "build":
        if args.seeded:
            table.seeded(args.seeded, args.out, table.GRID if args.grid == "full" else table.SEED_GRID)
            return
        full = table.SEED_GRID if args.grid == "seeds" else table.GRID
        grid = {t: full[t] for t in (args.only or full)}
        if args.collapsed:
            grid = table.collapsed_grid(args.out, grid)
        if args.collapsed or args.merge:                  # build a part, then replace its configurations in --out
            part = table.build(args.out.with_suffix(f".part{args.seed}.gz"), args.workdir, args.epochs, grid, 0,
                               args.cpus, seed=args.seed)
            if args.out.is_file():
                table.merge(args.out, part, args.out)
            else:
                part.rename(args.out)
                return
            part.unlink()
        else:
            table.build(args.out, args.workdir, args.epochs, grid, num_cpus=args.cpus, seed=args.seed)
    elif args.command == "bound":
        try:
            _bound(args)
        except ValueError as e:                                  # a table it cannot bound: one line
            raise SystemExit(f"bound: {e}") from None
    else:
        from benchmarks.efficiency.cli import replay_main
        if args.smoke_test:
            args.seeds, args.strategies, args.asha_trials, args.png, args.save = 1, ["random+fifo", "default"], 6, None, None
            args.fifo_fraction = 0.0                         # the fewest FIFO trials, 2
        if args.json:
            import contextlib
            import json
            from benchmarks.efficiency.cli import confidence_json
            from benchmarks.efficiency.confidence import config_noise
            with contextlib.redirect_stdout(sys.stderr):          # Ray and the report: stderr; the object: stdout
                results = replay_main(args, log=lambda *a: print(*a, file=sys.stderr))
            print(json.dumps(confidence_json(results, config_noise(table.load(args.table)))))
        else:
            replay_main(args)


def _bound(args) -> None:
    from benchmarks.efficiency.cli import bound_main
    if args.json:
        import contextlib
        import json
        with contextlib.redirect_stdout(sys.stderr):
            result = bound_main(args, log=lambda *a: print(*a, file=sys.stderr))
        print(json.dumps(result, default=str))
    else:
        bound_main(args)


if __name__ == "__main__":
    main()

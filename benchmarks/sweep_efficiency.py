"""Sweep efficiency: a tabular benchmark of Q3R sweeps on digits.

    python benchmarks/sweep_efficiency.py build     # the grid, trained once -> benchmarks/data/digits_grid.csv.gz
    python benchmarks/sweep_efficiency.py replay    # search strategies replayed against the table
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
    r = sub.add_parser("replay", help="replay search strategies against the table")
    r.add_argument("--table", type=Path, default=table.TABLE)
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--strategies", nargs="+", default=None)
    r.add_argument("--asha-trials", type=int, default=None, help="trials of the ASHA strategies (default 0.7 x grid)")
    r.add_argument("--epoch-ms", type=float, default=20.0, help="simulated milliseconds of a mean recorded epoch")
    r.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "data" / "sweep_efficiency.png")
    r.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "data" / "sweep_efficiency.json")
    args = parser.parse_args(argv)
    if args.command == "build":
        table.build(args.out, args.workdir, args.epochs, num_cpus=args.cpus)
    else:
        from benchmarks.efficiency.cli import replay_main
        replay_main(args)


if __name__ == "__main__":
    main()

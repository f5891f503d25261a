"""The ``q3r-tune`` command: a thin argparse layer over library calls."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from q3r.demo import main as demo
    demo(epochs=args.epochs, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q3r-tune", description="Tune Q3R low-rank training.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train AdamW and AdamQ3R on digits and score them by truncation")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``q3r-tune`` command: a thin argparse layer over library calls."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from q3r.demo import main as demo
    demo(epochs=args.epochs, threads=args.threads)
    return 0


def _train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from q3r import config
    from q3r.recipe import run_trial

    try:
        cfg = config.load(args.spec, args.set)
    except config.ConfigError as e:
        print(f"q3r-tune train: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    out.mkdir(parents=True, exist_ok=True)
    config.dump(cfg, out / "config.yaml")
    print(f"training {cfg.technique.name} on {cfg.data.name}; checkpoints and scores in {out}")
    from q3r.data import DatasetError
    try:
        result = run_trial(cfg, checkpoint_dir=str(out), resume=args.resume, log=print)
    except (DatasetError, FileNotFoundError) as e:
        print(f"q3r-tune train: {e}", file=sys.stderr)
        return 2
    (out / "scores.json").write_text(json.dumps({"status": result.status, "epoch": result.epoch,
                                                 "metrics": result.metrics, "history": result.history}, indent=2))
    m = result.metrics
    print(f"status: {result.status} after {result.epoch} epochs")
    for key in sorted((k for k in m if k.startswith("acc@")), key=lambda k: float(k[4:])):
        p = key[4:]
        print(f"  retention {p:>5}: accuracy {m[key]:.4f}  parameters {m[f'params@{p}']}")
    print(f"scores written to {out / 'scores.json'}")
    return 0 if result.status == "completed" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q3r-tune", description="Tune Q3R low-rank training.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train AdamW and AdamQ3R on digits and score them by truncation")
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train one configuration from a trial spec and score it by truncation")
    train.add_argument("spec", help="a trial spec (YAML: data, model, technique, train sections)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one field, e.g. --set technique.lmbda=0.5 (repeatable)")
    train.add_argument("--out", help="output folder (default runs/<spec name>)")
    train.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``q3r-tune demo``, ``train``, ``targets`` and ``schema``: one trial, or a spec, without a sweep."""
from __future__ import annotations

import argparse
import sys

from tuning.cli.common import fail


def demo_cmd(args: argparse.Namespace) -> int:
    from tuning.trial.demo import main as demo
    demo(epochs=args.epochs, threads=args.threads)
    return 0


def train_cmd(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tuning.trial import spec as config
    from tuning.trial.files import CHECKPOINT, SCORES, TRAIN_CONFIG
    from tuning.trial.metrics import level_key, levels, params_key
    from tuning.trial.recipe import FunctionError, run_trial
    from tuning.trial.usercode import UserCodeError, check_imports, import_callable
    try:
        cfg = config.load(args.spec, args.set)
        check_imports(cfg)
        if cfg.function is not None:
            import_callable(cfg.function, [cfg.code_dir])
    except (config.SpecError, UserCodeError) as e:
        print(f"q3r-tune train: {e}", file=sys.stderr)
        return 2
    for line in cfg.advice():
        print(f"q3r-tune train: warning: {args.spec}: {line}", file=sys.stderr)
    from tuning.tracking.store import TrackingError, check_tracking, default_uri
    from tuning.tracking.mirror import TrainRun
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    uri = args.tracking_uri or default_uri()
    try:
        client = check_tracking(uri)
    except TrackingError as e:
        return fail("train", e)
    out.mkdir(parents=True, exist_ok=True)
    config.dump(cfg, out / TRAIN_CONFIG)
    what = f"function {cfg.function}" if cfg.function else cfg.data.name
    print(f"training {cfg.technique.name} on {what}; checkpoints and scores in {out}")
    experiment = args.experiment or f"train-{Path(args.spec).stem}"
    tracked = TrainRun(client, experiment, cfg, str((out / CHECKPOINT).resolve()), resume=args.resume)
    print(f"MLflow: experiment {experiment!r}, run {tracked.run_id}, tracking URI {uri}")
    from tuning.trial.data import DatasetError
    try:
        result = run_trial(cfg, report=tracked.report, checkpoint_dir=str(out), resume=args.resume, log=print)
    except BaseException as e:
        tracked.finish("failed", error=str(e) if isinstance(e, FunctionError) else "")
        if isinstance(e, FunctionError):
            print(f"q3r-tune train: {e}", file=sys.stderr)
            return 1
        if isinstance(e, (DatasetError, FileNotFoundError, UserCodeError)):
            print(f"q3r-tune train: {e}", file=sys.stderr)
            return 2
        raise
    tracked.finish(result.status)
    (out / SCORES).write_text(json.dumps({"status": result.status, "epoch": result.epoch,
                                          "metrics": result.metrics, "history": result.history}, indent=2))
    m, metric = result.metrics, cfg.train.metric.as_metric()
    print(f"status: {result.status} after {result.epoch} epochs")
    for p in sorted(levels(m, metric.key)):
        print(f"  retention {level_key(p):>5}: {metric.name} {m[metric.at(p)]:.4f}  parameters {m[params_key(p)]}")
    print(f"scores written to {out / SCORES}")
    print(f"  export: q3r-tune export --run {tracked.run_id} --retention P -o DIR --tracking-uri {uri}")
    return 0 if result.status == "completed" else 1


def targets_cmd(args: argparse.Namespace) -> int:
    """What a trial or sweep spec regularizes (a sweep spec: its base trial's model)."""
    from tuning.trial import spec as config
    from tuning.trial.data import DatasetError
    from tuning.trial.targets import format_targets, spec_targets
    from tuning.trial.usercode import UserCodeError
    try:
        cfg = trial_of_any_spec(args.spec, args.set)
        report = spec_targets(cfg)
    except (config.SpecError, UserCodeError, DatasetError, FileNotFoundError, ValueError) as e:
        return fail("targets", e)
    print(format_targets(report))
    return 0


def trial_of_any_spec(path: str, overrides):
    """The trial spec at ``path``, or the base trial of the sweep spec there (it has ``techniques:``)."""
    from tuning.trial import spec as config
    from tuning.trial.specio import read_yaml
    if "techniques" not in read_yaml(path, "spec"):
        return config.load(path, overrides)
    from tuning.spec.sweep import load_spec
    sweep = load_spec(path, overrides)
    technique, space = next(iter(sweep.spaces.items()))
    return sweep.trial_config(technique, {p: d.first() for p, d in space.items()})


def schema_cmd(args: argparse.Namespace) -> int:
    from tuning.spec.sweep import json_schema
    print(json_schema(args.kind))
    return 0

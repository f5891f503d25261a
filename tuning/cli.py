"""The ``q3r-tune`` command: a thin argparse layer over library calls."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tuning.trial.demo import main as demo
    demo(epochs=args.epochs, threads=args.threads)
    return 0


def _train(args: argparse.Namespace) -> int:
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
        return _fail("train", e)
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
    if cfg.function is None:                 # export rebuilds the built-in model; a function's is its own
        print(f"  export: q3r-tune export --run {tracked.run_id} --retention P -o DIR --tracking-uri {uri}")
    return 0 if result.status == "completed" else 1


def _fail(command: str, error: Exception, code: int = 2) -> int:
    print(f"q3r-tune {command}: {error}", file=sys.stderr)
    return code


def _sweep_errors():
    from tuning.spec.sweep import SpecError
    from tuning.tracking.spool import SpoolBusy
    from tuning.tracking.store import TrackingError
    from tuning.trial.data import DatasetError
    from tuning.trial.usercode import UserCodeError
    return (SpecError, TrackingError, SpoolBusy, DatasetError, UserCodeError, FileNotFoundError, ValueError)


def _running(command: str, name: str, call, report=None) -> int:
    """Run a sweep command; a tracking server that fails mid-way is one line and exit code 1 (the
    trials are kept, the spool says what is not yet in MLflow), bad input one line and exit code 2.
    ``report`` prints the outcome (default: where the sweep is)."""
    from mlflow.exceptions import MlflowException

    from tuning.tracking.sync import TrackingDown
    try:
        outcome = call()
    except TrackingDown as e:
        return _fail(command, e, 1)
    except _sweep_errors() as e:
        return _fail(command, e)
    except MlflowException as e:
        return _fail(command, f"the MLflow tracking store failed: {' '.join(str(e).split())[:300]}; the trials "
                              f"are kept: `q3r-tune resume {name}` finishes the sweep once it answers", 1)
    (report or _where)(outcome)
    return 0


def _versions_fail(command: str) -> int | None:
    """Exit code 2 and one line if an installed Ray, Optuna or MLflow is outside the tested range."""
    from tuning.sweep.versions import VersionError, check_versions
    try:
        check_versions()
    except VersionError as e:
        return _fail(command, e)
    return None


def _sweep(args: argparse.Namespace) -> int:
    if (code := _versions_fail("sweep")) is not None:
        return code
    from tuning.spec.sweep import load_spec
    from tuning.sweep.driver import run_sweep
    try:
        spec = load_spec(args.spec, args.set, variant=args.variant)
    except _sweep_errors() as e:
        return _fail("sweep", e)
    return _running("sweep", spec.experiment_name, lambda: run_sweep(
        spec, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, tracking_wait=args.tracking_wait))


def _continue(args: argparse.Namespace) -> int:
    """``resume`` (search, then confirmation) or ``confirm`` (the confirmation alone) of a sweep."""
    if (code := _versions_fail(args.command)) is not None:
        return code
    from tuning.sweep.driver import confirm_sweep, resume_sweep
    run = resume_sweep if args.command == "resume" else confirm_sweep
    return _running(args.command, args.name, lambda: run(
        args.name, address=args.address, tracking_uri=args.tracking_uri, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, tracking_wait=args.tracking_wait))


def _sync(args: argparse.Namespace) -> int:
    from tuning.tracking.sync import sync_sweep
    return _running("sync", args.name, lambda: sync_sweep(args.name, tracking_uri=args.tracking_uri,
                                                          wait=args.tracking_wait), report=lambda _: None)


def _where(outcome) -> None:
    print(f"sweep {outcome.name}: {len(outcome.records)} trials; MLflow tracking URI {outcome.tracking_uri}, "
          f"parent run {outcome.parent_run_id}")
    print(f"  inspect: q3r-tune pareto {outcome.name} | q3r-tune recommend {outcome.name} --budget 0.2")


def _outcomes(parent, records) -> None:
    from tuning.analysis.records import outcome_lines
    from tuning.tracking.results import sweep_techniques
    print("Trials by technique:")
    for line in outcome_lines(records, sweep_techniques(parent)):
        print(f"  {line}")


def _pareto(args: argparse.Namespace) -> int:
    from tuning.analysis.pareto import format_table, front_table, fronts
    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    try:
        parent, records = load_sweep(args.tracking_uri or default_uri(), args.name, with_history=False)
    except _sweep_errors() as e:
        return _fail("pareto", e)
    _outcomes(parent, records)
    metric = sweep_metric(parent)
    result = fronts(records, metric=metric)
    if not result.all_points:
        return _fail("pareto", ValueError(f"sweep {args.name!r} has no trial that finished its full budget yet"))
    fronts_to_show = {"all techniques": result.overall}
    if args.per_technique:
        fronts_to_show.update(result.per_technique)
    for title, front in fronts_to_show.items():
        hv = result.hypervolume if title == "all techniques" else result.per_technique_hypervolume[title]
        print(f"Pareto front, {title} (hypervolume {hv:.4f}, {len(front)} points):")
        print(format_table(front_table(front, metric)))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from tuning.analysis.recommend import parse_budget, recommend, write_spec
    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    try:
        budget = parse_budget(args.budget)
        parent, records = load_sweep(args.tracking_uri or default_uri(), args.name, with_history=False)
        _outcomes(parent, records)
        rec = recommend(records, budget, metric=sweep_metric(parent))
        out = _output(args.out or f"recommended-{args.name}-{args.budget}.yaml", "--out")
    except _sweep_errors() as e:
        return _fail("recommend", e)
    p = rec.point
    write_spec(rec, out)
    hp = "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.params.items())
    print(f"best within budget {args.budget}: {p.technique}  {hp}")
    name = rec.metric.name
    print(f"  retention {p.retention:g}: {name} {p.accuracy:.4f}, {p.parameters:,} parameters "
          f"({p.targeted:.1%} of the targeted matrices), trial {p.trial_id}")
    for alt in rec.alternatives:
        print(f"  runner-up: {alt.technique} at retention {alt.retention:g}: {name} {alt.accuracy:.4f}, "
              f"{alt.parameters:,} parameters")
    print(f"trial spec written to {out}; run it with: q3r-tune train {out}")
    return 0


def _output(path, what: str, folder: bool = False):
    """``path`` with its folder created (``folder``: ``path`` is the folder), or a ``ValueError`` in one line."""
    from pathlib import Path

    path = Path(path)
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot create the folder {target} ({e.strerror})") from None
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; name a file")
    return path


def _report(args: argparse.Namespace) -> int:
    import time

    from dashboards.report import write_pngs, write_report

    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    uri = args.tracking_uri or default_uri()
    try:
        parent, records = load_sweep(uri, args.name)
        out = _output(args.out or f"report-{args.name}.html", "-o")
        pngs = _output(args.pngs, "--pngs", folder=True) if args.pngs else None
    except _sweep_errors() as e:
        return _fail("report", e)
    subtitle = (f"MLflow {uri}, parent run {parent.info.run_id} ({parent.info.status}), "
                f"read {time.strftime('%Y-%m-%d %H:%M:%S')}")
    metric = sweep_metric(parent)
    out = write_report(records, out, title=f"q3r-tune sweep {args.name}", subtitle=subtitle, metric=metric)
    print(f"report of {len(records)} trials written to {out.resolve()}")
    if pngs:
        for path in write_pngs(records, pngs, metric=metric):
            print(f"  {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tuning.artifacts.export import describe, export_run, export_sweep, log_model, model_name
    from tuning.analysis.recommend import parse_budget
    from tuning.tracking.store import check_tracking, default_uri
    uri = args.tracking_uri or default_uri()
    try:
        if (args.name is None) == (args.run is None):
            raise ValueError("name either a sweep (q3r-tune export NAME --budget B) or a run (--run RUN_ID)")
        if args.name is not None and (args.budget is None or args.retention is not None):
            raise ValueError("a sweep's model is chosen by --budget (a fraction or a parameter count), not --retention")
        if args.run is not None and (args.budget is None) == (args.retention is None):
            raise ValueError("--run needs either --retention P or --budget B")
        budget = None if args.budget is None else parse_budget(args.budget)
        label = model_name(budget, args.retention)
        out = args.out or (f"{args.name or args.run}-{label}")
        if args.name is not None:
            export = export_sweep(uri, args.name, budget, out, storage=args.storage, verify=args.verify)
        else:
            export = export_run(uri, args.run, out, retention=args.retention, budget=budget, storage=args.storage,
                                verify=args.verify)
        for line in describe(export):
            print(line)
        if not args.no_mlflow:
            info = log_model(check_tracking(uri), export.run_id, export, label, register=args.register)
            registered = f"; registered as {args.register!r} version {info.registered_model_version}" \
                if args.register else ""
            print(f"MLflow: model {label!r} ({info.model_uri}) logged on run {export.run_id}{registered}; "
                  f"load it with mlflow.pytorch.load_model('runs:/{export.run_id}/{label}')")
    except _sweep_errors() as e:
        return _fail("export", e)
    except OSError as e:                        # the output folder cannot be written
        return _fail("export", f"cannot write {e.filename or args.out}: {e.strerror}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from dashboards.ui import UIError, serve

    from tuning.tracking.store import default_uri
    try:
        return serve(args.tracking_uri or default_uri(), args.host, args.port, log=lambda m: print(m, flush=True))
    except UIError as e:
        return _fail("ui", e)


def _targets(args: argparse.Namespace) -> int:
    """What a trial or sweep spec regularizes (a sweep spec: its base trial's model)."""
    from tuning.trial import spec as config
    from tuning.trial.data import DatasetError
    from tuning.trial.targets import format_targets, spec_targets
    from tuning.trial.usercode import UserCodeError
    try:
        cfg = _trial_of_any_spec(args.spec, args.set)
        report = spec_targets(cfg)
    except (config.SpecError, UserCodeError, DatasetError, FileNotFoundError, ValueError) as e:
        return _fail("targets", e)
    print(format_targets(report))
    return 0


def _trial_of_any_spec(path: str, overrides):
    """The trial spec at ``path``, or the base trial of the sweep spec there (it has ``techniques:``)."""
    from tuning.trial import spec as config
    from tuning.trial.specio import read_yaml
    if "techniques" not in read_yaml(path, "spec"):
        return config.load(path, overrides)
    from tuning.spec.sweep import load_spec
    sweep = load_spec(path, overrides)
    technique, space = next(iter(sweep.spaces.items()))
    return sweep.trial_config(technique, {p: d.first() for p, d in space.items()})


def _schema(args: argparse.Namespace) -> int:
    from tuning.spec.sweep import json_schema
    print(json_schema(args.kind))
    return 0


def _tracking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default sqlite:///./mlruns.db; an http:// server for clusters)")


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
    train.add_argument("--experiment", help="MLflow experiment (default train-<spec name>)")
    _tracking_option(train)
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="run a sweep spec with Ray Tune (ASHA + Optuna), tracked in MLflow")
    sweep.add_argument("spec", help="a sweep spec, e.g. search_spaces/digits_vit.yaml")
    sweep.add_argument("--variant", help="a named variant of the spec (e.g. grid)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field, e.g. --set num_samples=4 (repeatable)")
    sweep.add_argument("--storage", help="folder for Ray's trial state and checkpoints (default ./q3r-runs)")
    resume = sub.add_parser("resume", help="continue an interrupted sweep (search and confirmation), found by its name")
    confirm = sub.add_parser("confirm", help="run, or complete, the confirmation over seeds of a finished sweep")
    sync = sub.add_parser("sync", help="send to MLflow what a sweep's tracking spool still holds (after an outage)")
    for p in (sweep, resume, confirm, sync):
        if p is not sweep:
            p.add_argument("name", help="the sweep's name (its MLflow experiment)")
            p.set_defaults(func=_continue)
        _tracking_option(p)
        p.add_argument("--tracking-wait", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for a tracking server that does not answer before leaving the "
                            "logging in the sweep's spool (default 60)")
        if p is not sync:
            p.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: local)")
            p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
            p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: all)")
    sweep.set_defaults(func=_sweep)
    sync.set_defaults(func=_sync)

    pareto = sub.add_parser("pareto", help="print a sweep's accuracy-vs-parameters Pareto front")
    pareto.add_argument("name", help="the sweep's name (its MLflow experiment)")
    pareto.add_argument("--per-technique", action="store_true", help="also print each technique's front")
    _tracking_option(pareto)
    pareto.set_defaults(func=_pareto)

    rec = sub.add_parser("recommend", help="the best configuration within a parameter budget, as a trial spec")
    rec.add_argument("name", help="the sweep's name (its MLflow experiment)")
    rec.add_argument("--budget", required=True,
                     help="a fraction of the targeted parameters (0.2) or a whole-model parameter count (50000)")
    rec.add_argument("--out", help="where to write the trial spec (default recommended-NAME-BUDGET.yaml)")
    _tracking_option(rec)
    rec.set_defaults(func=_recommend)

    report = sub.add_parser("report", help="write a sweep's HTML report (Pareto front, retention curves, "
                                           "sensitivity, ASHA progress, recommendations)")
    report.add_argument("name", help="the sweep's name (its MLflow experiment); finished or still running")
    report.add_argument("-o", "--out", help="the HTML file to write (default report-NAME.html)")
    report.add_argument("--pngs", metavar="FOLDER", help="also write the figures as PNGs into FOLDER")
    _tracking_option(report)
    report.set_defaults(func=_report)

    export = sub.add_parser("export", help="write the recommended model truncated and factorized (safetensors + spec) "
                                           "and log it to MLflow")
    export.add_argument("name", nargs="?", help="the sweep's name (its MLflow experiment)")
    export.add_argument("--budget", help="the recommendation's budget: a fraction of the targeted parameters (0.2) "
                                         "or a whole-model parameter count (50000)")
    export.add_argument("--run", metavar="RUN_ID", help="export this MLflow run instead: a sweep trial or a "
                                                        "q3r-tune train run (with --retention or --budget)")
    export.add_argument("--retention", type=float, help="with --run: the retention level p in (0, 1]")
    export.add_argument("-o", "--out", help="the folder to write (default NAME-model-budget-B)")
    export.add_argument("--register", metavar="MODEL_NAME", help="also register the model under this name in "
                                                                 "MLflow's model registry")
    export.add_argument("--storage", help="where the run's checkpoints are now, if they moved: the sweep's Ray "
                                          "storage folder, or a train run's output folder")
    export.add_argument("--verify", action="store_true", help="also measure the exported model's accuracy "
                                                              "on the validation split")
    export.add_argument("--no-mlflow", action="store_true", help="write the folder only, log nothing")
    _tracking_option(export)
    export.set_defaults(func=_export)

    targets = sub.add_parser("targets", help="print what a spec regularizes: each matrix, its shape, r(p) at every "
                                             "retention, the parameter shares")
    targets.add_argument("spec", help="a trial spec or a sweep spec (YAML)")
    targets.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one field, e.g. --set model.modules=[qkv] (repeatable)")
    targets.set_defaults(func=_targets)

    schema = sub.add_parser("schema", help="print the JSON Schema of sweep specs (or trial specs), for editors")
    schema.add_argument("kind", nargs="?", choices=("sweep", "trial"), default="sweep")
    schema.set_defaults(func=_schema)

    ui = sub.add_parser("ui", help="serve the MLflow UI on the tracking store until Ctrl+C")
    _tracking_option(ui)
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    ui.set_defaults(func=_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

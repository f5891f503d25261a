"""The ``q3r-tune`` command: a thin argparse layer over library calls (one module per kind of command)."""
from __future__ import annotations

import argparse

from tuning.cli.common import tracking_option
from tuning.cli.single import demo_cmd, schema_cmd, targets_cmd, train_cmd
from tuning.cli.sweeps import continue_cmd, sweep_cmd, sync_cmd
from tuning.cli.results import export_cmd, pareto_cmd, recommend_cmd, report_cmd, ui_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q3r-tune", description="Tune Q3R low-rank training.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train AdamW and AdamQ3R on digits and score them by truncation")
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.set_defaults(func=demo_cmd)
    train = sub.add_parser("train", help="train one configuration from a trial spec and score it by truncation")
    train.add_argument("spec", help="a trial spec (YAML: data, model, technique, train sections)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one field, e.g. --set technique.lmbda=0.5 (repeatable)")
    train.add_argument("--out", help="output folder (default runs/<spec name>)")
    train.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    train.add_argument("--experiment", help="MLflow experiment (default train-<spec name>)")
    tracking_option(train)
    train.set_defaults(func=train_cmd)

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
            p.set_defaults(func=continue_cmd)
        tracking_option(p)
        p.add_argument("--tracking-wait", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for a tracking server that does not answer before leaving the "
                            "logging in the sweep's spool (default 60)")
        if p is not sync:
            p.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: local)")
            p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
            p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: all)")
    sweep.set_defaults(func=sweep_cmd)
    sync.set_defaults(func=sync_cmd)

    pareto = sub.add_parser("pareto", help="print a sweep's accuracy-vs-parameters Pareto front")
    pareto.add_argument("name", help="the sweep's name (its MLflow experiment)")
    pareto.add_argument("--per-technique", action="store_true", help="also print each technique's front")
    tracking_option(pareto)
    pareto.set_defaults(func=pareto_cmd)

    rec = sub.add_parser("recommend", help="the best configuration within a parameter budget, as a trial spec")
    rec.add_argument("name", help="the sweep's name (its MLflow experiment)")
    rec.add_argument("--budget", required=True,
                     help="a fraction of the targeted parameters (0.2) or a whole-model parameter count (50000)")
    rec.add_argument("--out", help="where to write the trial spec (default recommended-NAME-BUDGET.yaml)")
    tracking_option(rec)
    rec.set_defaults(func=recommend_cmd)

    report = sub.add_parser("report", help="write a sweep's HTML report (Pareto front, retention curves, "
                                           "sensitivity, ASHA progress, recommendations)")
    report.add_argument("name", help="the sweep's name (its MLflow experiment); finished or still running")
    report.add_argument("-o", "--out", help="the HTML file to write (default report-NAME.html)")
    report.add_argument("--pngs", metavar="FOLDER", help="also write the figures as PNGs into FOLDER")
    tracking_option(report)
    report.set_defaults(func=report_cmd)

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
    tracking_option(export)
    export.set_defaults(func=export_cmd)

    targets = sub.add_parser("targets", help="print what a spec regularizes: each matrix, its shape, r(p) at every "
                                             "retention, the parameter shares")
    targets.add_argument("spec", help="a trial spec or a sweep spec (YAML)")
    targets.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one field, e.g. --set model.modules=[qkv] (repeatable)")
    targets.set_defaults(func=targets_cmd)

    schema = sub.add_parser("schema", help="print the JSON Schema of sweep specs (or trial specs), for editors")
    schema.add_argument("kind", nargs="?", choices=("sweep", "trial"), default="sweep")
    schema.set_defaults(func=schema_cmd)

    ui = sub.add_parser("ui", help="serve the MLflow UI on the tracking store until Ctrl+C")
    tracking_option(ui)
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    ui.set_defaults(func=ui_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

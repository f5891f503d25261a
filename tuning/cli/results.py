"""``q3r-tune pareto``, ``recommend``, ``report``, ``export`` and ``ui``: commands that read a finished sweep."""
from __future__ import annotations

import argparse

from tuning.cli.common import fail, outcomes, output_path, sweep_errors


def pareto_cmd(args: argparse.Namespace) -> int:
    from tuning.analysis.pareto import format_table, front_table, fronts
    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    try:
        parent, records = load_sweep(args.tracking_uri or default_uri(), args.name, with_history=False)
    except sweep_errors() as e:
        return fail("pareto", e)
    outcomes(parent, records)
    metric = sweep_metric(parent)
    result = fronts(records, metric=metric)
    if not result.all_points:
        return fail("pareto", ValueError(f"sweep {args.name!r} has no trial that finished its full budget yet"))
    fronts_to_show = {"all techniques": result.overall}
    if args.per_technique:
        fronts_to_show.update(result.per_technique)
    for title, front in fronts_to_show.items():
        hv = result.hypervolume if title == "all techniques" else result.per_technique_hypervolume[title]
        print(f"Pareto front, {title} (hypervolume {hv:.4f}, {len(front)} points):")
        print(format_table(front_table(front, metric)))
    return 0


def recommend_cmd(args: argparse.Namespace) -> int:
    from tuning.analysis.recommend import accuracy_text, parse_budget, recommend, write_spec
    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    try:
        budget = parse_budget(args.budget)
        parent, records = load_sweep(args.tracking_uri or default_uri(), args.name, with_history=False)
        outcomes(parent, records)
        rec = recommend(records, budget, metric=sweep_metric(parent))
        out = output_path(args.out or f"recommended-{args.name}-{args.budget}.yaml", "--out")
    except sweep_errors() as e:
        return fail("recommend", e)
    p = rec.point
    write_spec(rec, out)
    hp = "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.params.items())
    print(f"best within budget {args.budget}: {p.technique}  {hp}")
    name = rec.metric.name
    print(f"  retention {p.retention:g}: {name} {accuracy_text(p.accuracy, p.std, p.seeds)}, {p.parameters:,} parameters "
          f"({p.targeted:.1%} of the targeted matrices), trial {p.trial_id}")
    for alt in rec.alternatives:
        print(f"  runner-up: {alt.technique} at retention {alt.retention:g}: {name} "
              f"{accuracy_text(alt.accuracy, alt.std, alt.seeds)}, "
              f"{alt.parameters:,} parameters")
    print(f"trial spec written to {out}; run it with: q3r-tune train {out}")
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    import time

    from dashboards.report import write_pngs, write_report

    from tuning.tracking.results import load_sweep, sweep_metric
    from tuning.tracking.store import default_uri
    uri = args.tracking_uri or default_uri()
    try:
        parent, records = load_sweep(uri, args.name)
        out = output_path(args.out or f"report-{args.name}.html", "-o")
        pngs = output_path(args.pngs, "--pngs", folder=True) if args.pngs else None
    except sweep_errors() as e:
        return fail("report", e)
    subtitle = (f"MLflow {uri}, parent run {parent.info.run_id} ({parent.info.status}), "
                f"read {time.strftime('%Y-%m-%d %H:%M:%S')}")
    metric = sweep_metric(parent)
    out = write_report(records, out, title=f"q3r-tune sweep {args.name}", subtitle=subtitle, metric=metric)
    print(f"report of {len(records)} trials written to {out.resolve()}")
    if pngs:
        for path in write_pngs(records, pngs, metric=metric):
            print(f"  {path}")
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from tuning.artifacts.export import describe, export_run, export_sweep, is_function, log_model, model_name
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
            if is_function(export):
                print(f"MLflow: the files logged on run {export.run_id} as artifacts {label}/ ({info.model_uri})")
            else:
                print(f"MLflow: model {label!r} ({info.model_uri}) logged on run {export.run_id}{registered}; "
                      f"load it with mlflow.pytorch.load_model('runs:/{export.run_id}/{label}')")
    except sweep_errors() as e:
        return fail("export", e)
    except OSError as e:                        # the output folder cannot be written
        return fail("export", f"cannot write {e.filename or args.out}: {e.strerror}")
    return 0


def ui_cmd(args: argparse.Namespace) -> int:
    from dashboards.ui import UIError, serve

    from tuning.tracking.store import default_uri
    try:
        return serve(args.tracking_uri or default_uri(), args.host, args.port, log=lambda m: print(m, flush=True))
    except UIError as e:
        return fail("ui", e)

"""What a finished sweep leaves on its MLflow parent run: results, Pareto fronts, recommendations.

Artifacts: ``results.csv`` (one row per trial), ``pareto/front.csv`` and ``pareto/fronts.json``
(overall and per technique, with hypervolumes), ``recommendations.json`` (the best configuration
at each budget), ``recommended/<budget>.yaml`` (trial specs that ``q3r-tune train`` runs as they
are), ``report.html`` (the interactive report of ``dashboards``, also for a sweep without a finished
trial) and ``figures/*.png`` (its figures as images). Metrics: ``hypervolume`` and
``hypervolume/<technique>``.
"""
from __future__ import annotations

import csv
import io
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

from tuning.artifacts.export import log_recommended_models
from tuning.analysis.pareto import format_table, front_table, fronts
from tuning.analysis.recommend import BUDGETS, accuracy_text, recommend, recommendation_table, write_spec
from tuning.analysis.records import outcome_lines
from tuning.tracking.results import results_table
from tuning.trial.metrics import DEFAULT_METRIC, Metric


def to_csv(rows: list[dict]) -> str:
    keys: list = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def shown_row(row: dict, metric: Metric = DEFAULT_METRIC) -> dict:
    """A recommendation row for printing: the metric as mean +- std over its seeds."""
    out = {k: v for k, v in row.items() if k not in ("std", "seeds", metric.name)}
    out[f"{metric.name} (mean +- std)"] = accuracy_text(row[metric.name], row["std"], row["seeds"])
    return out


def point_dict(p, metric: Metric = DEFAULT_METRIC) -> dict:
    return {"trial_id": p.trial_id, "technique": p.technique, "params": p.params, "retention": p.retention,
            "parameters": p.parameters, "targeted": p.targeted, metric.name: p.accuracy, "run_id": p.run_id,
            "std": None if p.seeds < 2 else p.std, "seeds": p.seeds}


def publish(client, parent: str, spec, records: list, log: Callable[[str], None] = print) -> dict:
    """Log the sweep's results on the parent run and print the front and the recommendation."""
    metric = spec.score
    client.log_text(parent, to_csv(results_table(records, spec.retentions, metric)), "results.csv")
    log("Trials by technique:")
    for line in outcome_lines(records, list(spec.spaces)):
        log(f"  {line}")
    result = fronts(records, metric=metric)
    summary: dict = {"trials": len(records), "completed": sum(r.status == "completed" for r in records)}
    if not result.all_points:
        log("no trial finished its full budget: no Pareto front yet")
        summary.update(log_report(client, parent, records, log, metric))
        return summary
    client.log_text(parent, to_csv(front_table(result.overall, metric)), "pareto/front.csv")
    reference = {} if metric == DEFAULT_METRIC else {"metric": {"name": metric.name, "mode": metric.mode},
                                                     "ref_value": result.ref_value}
    client.log_dict(parent, {"hypervolume": result.hypervolume, "ref_parameters": result.ref_parameters, **reference,
                             "overall": [point_dict(p, metric) for p in result.overall],
                             "per_technique": {t: [point_dict(p, metric) for p in f]
                                               for t, f in result.per_technique.items()},
                             "per_technique_hypervolume": result.per_technique_hypervolume},
                    "pareto/fronts.json")
    client.log_metric(parent, "hypervolume", result.hypervolume)
    for tech, hv in result.per_technique_hypervolume.items():
        client.log_metric(parent, f"hypervolume/{tech}", hv)
    table = recommendation_table(records, BUDGETS, metric=metric)
    client.log_dict(parent, {"budgets": table}, "recommendations.json")
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            try:
                rec = recommend(records, budget, metric=metric)
            except ValueError:
                continue
            path = Path(tmp) / f"budget-{budget:g}.yaml"
            write_spec(rec, path)
            client.log_artifact(parent, str(path), "recommended")
    log(f"Pareto front ({metric.label} vs parameters, trials that finished their budget):")
    log(format_table(front_table(result.overall, metric)))
    log(f"Recommended hyperparameters by budget (fraction of the targeted parameters; {metric.name} over seeds):")
    log(format_table([shown_row(row, metric) for row in table]))
    summary.update(log_recommended_models(client, parent, records, log, metric=metric))     # the models themselves
    summary.update(hypervolume=result.hypervolume, front=len(result.overall), recommendations=table)
    summary.update(log_report(client, parent, records, log, metric))
    return summary


def local_path(uri: str):
    """The local file behind an artifact URI (file:// or a plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:          # a path (or a Windows drive letter)
        return Path(uri)
    return None


def log_report(client, parent: str, records: list, log: Callable[[str], None] = print,
               metric: Metric = DEFAULT_METRIC) -> dict:
    """Log the full report (``report.html``) and its figures (``figures/*.png``) on the parent run;
    returns ``{"report": path}``, a local path when the artifact store is local, else its URI.
    A report that cannot be drawn is logged as such and does not fail the sweep."""
    try:
        from dashboards.report import write_pngs, write_report

        run = client.get_run(parent)
        name = client.get_experiment(run.info.experiment_id).name
        with tempfile.TemporaryDirectory() as tmp:
            html = write_report(records, Path(tmp) / "report.html", title=f"q3r-tune sweep {name}",
                                subtitle=f"MLflow parent run {parent}, written when the sweep finished at "
                                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}", metric=metric)
            client.log_artifact(parent, str(html))
            for png in write_pngs(records, Path(tmp) / "figures", metric=metric):
                client.log_artifact(parent, str(png), "figures")
    except Exception as e:  # noqa: BLE001 - hours of trials must not be lost to a drawing error
        log(f"the sweep report could not be written: {type(e).__name__}: {e}")
        return {"report_error": f"{type(e).__name__}: {e}"}
    where = run.info.artifact_uri.rstrip("/") + "/report.html"
    local = local_path(where)
    log(f"report: {local or where} (also in the MLflow UI: `q3r-tune ui`, parent run {parent}, Artifacts)")
    return {"report": str(local) if local else where}

"""What a finished sweep leaves on its MLflow parent run: results, Pareto fronts, recommendations.

Artifacts: ``results.csv`` (one row per trial), ``pareto/front.csv`` and ``pareto/fronts.json``
(overall and per technique, with hypervolumes), ``pareto/front.png``, ``recommendations.json``
(the best configuration at each budget) and ``recommended/<budget>.yaml`` (trial specs that
``q3r-tune train`` runs as they are). Metrics: ``hypervolume`` and ``hypervolume/<technique>``.
"""
from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Callable

from .pareto import format_table, front_table, fronts
from .recommend import recommend, recommendation_table, write_spec
from .results import results_table

BUDGETS = (0.05, 0.1, 0.2, 0.4)   # fractions of the targeted parameters


def to_csv(rows: list[dict]) -> str:
    keys: list = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def point_dict(p) -> dict:
    return {"trial_id": p.trial_id, "technique": p.technique, "params": p.params, "retention": p.retention,
            "parameters": p.parameters, "targeted": p.targeted, "accuracy": p.accuracy, "run_id": p.run_id}


def publish(client, parent: str, spec, records: list, log: Callable[[str], None] = print) -> dict:
    """Log the sweep's results on the parent run and print the front and the recommendation."""
    client.log_text(parent, to_csv(results_table(records, spec.retentions)), "results.csv")
    result = fronts(records)
    summary: dict = {"trials": len(records), "completed": sum(r.status == "completed" for r in records)}
    if not result.all_points:
        log("no trial finished its full budget: no Pareto front yet")
        return summary
    client.log_text(parent, to_csv(front_table(result.overall)), "pareto/front.csv")
    client.log_dict(parent, {"hypervolume": result.hypervolume, "ref_parameters": result.ref_parameters,
                             "overall": [point_dict(p) for p in result.overall],
                             "per_technique": {t: [point_dict(p) for p in f] for t, f in result.per_technique.items()},
                             "per_technique_hypervolume": result.per_technique_hypervolume},
                    "pareto/fronts.json")
    client.log_metric(parent, "hypervolume", result.hypervolume)
    for tech, hv in result.per_technique_hypervolume.items():
        client.log_metric(parent, f"hypervolume/{tech}", hv)
    table = recommendation_table(records, BUDGETS)
    client.log_dict(parent, {"budgets": table}, "recommendations.json")
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            try:
                rec = recommend(records, budget)
            except ValueError:
                continue
            path = Path(tmp) / f"budget-{budget:g}.yaml"
            write_spec(rec, path)
            client.log_artifact(parent, str(path), "recommended")
        png = Path(tmp) / "front.png"
        if draw_front_png(result, png):
            client.log_artifact(parent, str(png), "pareto")
    log("Pareto front (accuracy vs parameters, trials that finished their budget):")
    log(format_table(front_table(result.overall)))
    log("Recommended hyperparameters by budget (fraction of the targeted parameters):")
    log(format_table([{k: v for k, v in row.items()} for row in table]))
    summary.update(hypervolume=result.hypervolume, front=len(result.overall), recommendations=table)
    return summary


def draw_front_png(result, path: Path) -> bool:
    """The front as a PNG (the full interactive report is ``q3r-tune report``)."""
    try:
        from dashboards.static import pareto_png
    except ImportError:
        return False
    pareto_png(result, path)
    return True

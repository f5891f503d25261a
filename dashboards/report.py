"""One self-contained HTML report of a sweep (plotly.js embedded once), and its PNG versions.

``build_report(records)`` works on any list of ``TrialRecord``s: a finished sweep, one still
running (``tuning.tracking.results.load_sweep``), or none at all; figures without data say why.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Iterable, Sequence

from tuning.analysis.records import TrialRecord, outcome_lines
from tuning.trial.metrics import DEFAULT_METRIC, Metric

from . import data, static
from .style import NO_FINISHED, title

FIGURES = ("pareto", "retention", "sensitivity", "progress")       # one plotly figure each
PNGS = FIGURES + ("recommendations",)

CAPTIONS = {
    "pareto": "One faint point per (trial, retention level) of every trial that finished its budget; "
              "each technique's front as a thin line and the overall front in bold; diamonds with error "
              "bars: configurations confirmed over seeds (mean +- std). Hover for the hyperparameters; "
              "click a legend entry to hide it.",
    "retention": "For each technique its completed trial with the highest objective, truncated to "
                 "each retention level; the dotted line is the best full accuracy of the unregularized "
                 "model (adamw).",
    "sensitivity": "The objective of every trial that reported one, against each searched "
                   "hyperparameter. Marker: circle completed, X stopped early, open diamond running, "
                   "triangle diverged or collapsed.",
    "progress": "The objective at every evaluation of every trial; ASHA stops the weak ones early (X).",
    "recommendations": "The most accurate (configuration, retention level) whose targeted matrices keep at "
                       "most the given fraction of their parameters, by the mean accuracy over its seeds "
                       "(std and seeds columns; confirmed configurations first); `q3r-tune recommend NAME "
                       "--budget B` writes it as a trial spec.",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.subtitle, .caption { color: #555; } .summary { font-weight: 500; }
.note { background: #fff6d5; border: 1px solid #e6c84f; padding: 0.6rem 1rem; border-radius: 4px; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def caption(name: str, metric: Metric = DEFAULT_METRIC) -> str:
    """The caption of section ``name``, naming the sweep's metric and its direction."""
    text = CAPTIONS[name]
    if metric == DEFAULT_METRIC:
        return text
    text = text.replace("The most accurate", "The best").replace("accuracy", metric.name)
    return f"{text} The metric is {metric.name}: {metric.direction}."


def build_figures(records: Iterable[TrialRecord], metric: Metric = DEFAULT_METRIC) -> dict:
    """name -> plotly figure, for every name in FIGURES."""
    from . import figures

    records = list(records)
    search = data.search_trials(records)          # the figures of the search; confirmation seeds enter the front
    return {"pareto": figures.plot_pareto_front(data.pareto(records, metric)),
            "retention": figures.plot_retention(data.retention_curves(search, metric=metric)),
            "sensitivity": figures.plot_sensitivity(data.sensitivity(search), metric),
            "progress": figures.plot_progress(data.progress(search), metric)}


def summary_text(records: Sequence[TrialRecord], metric: Metric = DEFAULT_METRIC) -> str:
    s = data.summary(records)
    if not s.trials:
        return "No trial has started yet."
    counts = ", ".join(f"{n} {status}" for status, n in s.by_status.items())
    text = f"{s.trials} trial{'s' if s.trials != 1 else ''}: {counts}. By technique: " + "; ".join(outcome_lines(records))
    if s.finished:
        text += f"; hypervolume of the front {data.pareto(records, metric).hypervolume:.4f}"
    return text + "."


def table_html(rows: list[dict], metric: Metric = DEFAULT_METRIC) -> str:
    if not rows:
        return f'<p class="note">{NO_FINISHED}: no recommendation.</p>'
    cols = static.columns(metric)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in cols)
    body = "".join("<tr>" + "".join(
        f'<td class="{"num" if isinstance(r.get(k), (int, float)) else "text"}">'
        f"{html.escape(static.cell(k, r.get(k, ''), metric))}</td>" for k in cols) + "</tr>" for r in rows)
    return f'<table id="recommendation-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(name: str, content: str, metric: Metric = DEFAULT_METRIC) -> str:
    return (f'<section id="section-{name}"><h2>{html.escape(title(name, metric))}</h2>'
            f'<p class="caption">{html.escape(caption(name, metric))}</p>\n{content}\n</section>')


def build_report(records: Iterable[TrialRecord], title: str = "q3r-tune sweep", subtitle: str = "",
                 budgets: Iterable = data.BUDGETS, metric: Metric = DEFAULT_METRIC) -> str:
    """The whole report as one HTML page: plotly.js inline once, then one ``<div id="fig-NAME">``
    per figure and the recommendation table. Opens offline in any browser."""
    from plotly.offline import get_plotlyjs

    records = list(records)
    s = data.summary(records)
    note = "" if s.finished else (
        f'<p class="note" id="no-finished-trial"><b>{NO_FINISHED.capitalize()}.</b> The Pareto front, the '
        "retention curves and the recommendations appear once a trial has run its full budget; the "
        "sensitivity and progress plots show the trials reported so far.</p>")
    sections = []
    for name, fig in build_figures(records, metric).items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                          config={"displaylogo": False, "responsive": True})
        sections.append(_section(name, div, metric))
    sections.append(_section("recommendations", table_html(data.recommendations(records, budgets, metric), metric),
                             metric))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<header><h1>{html.escape(title)}</h1>",
        f'<p class="subtitle">{html.escape(subtitle)}</p>' if subtitle else "",
        f'<p class="summary">{html.escape(summary_text(records, metric))}</p>{note}</header>',
        *sections, "</body></html>"])


def write_report(records: Iterable[TrialRecord], path, title: str = "q3r-tune sweep", subtitle: str = "",
                 budgets: Iterable = data.BUDGETS, metric: Metric = DEFAULT_METRIC) -> Path:
    """``build_report`` written to ``path`` (its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(records, title, subtitle, budgets, metric), encoding="utf-8")
    return path


def write_pngs(records: Iterable[TrialRecord], folder, budgets: Iterable = data.BUDGETS,
               metric: Metric = DEFAULT_METRIC) -> list[Path]:
    """``folder``/NAME.png for every name in PNGS (matplotlib, no browser); returns the paths."""
    records, folder = list(records), Path(folder)
    search = data.search_trials(records)
    folder.mkdir(parents=True, exist_ok=True)
    return [static.pareto_png(data.pareto(records, metric), folder / "pareto.png"),
            static.retention_png(data.retention_curves(search, metric=metric), folder / "retention.png"),
            static.sensitivity_png(data.sensitivity(search), folder / "sensitivity.png", metric),
            static.progress_png(data.progress(search), folder / "progress.png", metric),
            static.recommendations_png(data.recommendations(records, budgets, metric), folder / "recommendations.png",
                                       metric)]

"""Interactive plotly figures of a sweep, in the style of ``optuna.visualization``.

Each ``plot_*`` function draws what one function of ``dashboards.data`` computed and decides
nothing itself; an empty input gives an empty figure that says why instead of an error.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuning.analysis.pareto import ParetoResult

from tuning.trial.metrics import DEFAULT_METRIC, Metric

from .data import Progress, RetentionData, Sensitivity
from .style import NO_FINISHED, axis, colour, params_text, symbol, title

HEIGHT = 460
FAINT = 0.25


def _figure(title: str, height: int = HEIGHT) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", height=height, hovermode="closest",
                      margin=dict(l=70, r=30, t=60, b=60), legend=dict(groupclick="toggleitem"))
    return fig


def _note(fig: go.Figure, text: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=16, color="#666"))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _point_text(p, metric: Metric = DEFAULT_METRIC) -> str:
    return (f"trial {p.trial_id} ({p.technique})<br>retention p={p.retention:g}<br>"
            f"parameters {p.parameters:,}<br>{metric.name} {p.accuracy:.4f}<br>{params_text(p.params)}")


def plot_pareto_front(result: ParetoResult) -> go.Figure:
    """Accuracy against parameters: every (trial, retention) point faint, each technique's front as
    a thin line, the overall front bold; configurations confirmed over seeds as diamonds at their mean
    with a std error bar. Traces: two per technique, one for the confirmed points if any, the front."""
    metric = result.metric
    fig = _figure(title("pareto", metric))
    if not result.all_points:
        return _note(fig, NO_FINISHED)
    techniques = sorted(result.per_technique)
    for tech in techniques:
        c = colour(tech, techniques)
        pts = [p for p in result.all_points if p.technique == tech]
        front = result.per_technique[tech]
        fig.add_trace(go.Scatter(
            x=[p.parameters for p in pts], y=[p.accuracy for p in pts], mode="markers",
            name=f"{tech}: every trial", legendgroup=tech, marker=dict(color=c, size=7, opacity=FAINT),
            text=[_point_text(p, metric) for p in pts], hovertemplate="%{text}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=[p.parameters for p in front], y=[p.accuracy for p in front], mode="lines+markers",
            name=f"{tech}: front", legendgroup=tech, line=dict(color=c, width=1.5, shape="hv"),
            marker=dict(color=c, size=6), text=[_point_text(p, metric) for p in front],
            hovertemplate="%{text}<extra></extra>"))
    if result.confirmed:
        conf = result.confirmed
        fig.add_trace(go.Scatter(
            x=[p.parameters for p in conf], y=[p.accuracy for p in conf], mode="markers",
            name="confirmed over seeds (mean, error bar = std)",
            error_y=dict(type="data", array=[p.std for p in conf], visible=True, color="#444"),
            marker=dict(color=[colour(p.technique, techniques) for p in conf], size=10, symbol="diamond",
                        line=dict(color="#444", width=1)),
            text=[f"{_point_text(p, metric)}<br>mean of {p.seeds} seeds, std {p.std:.4f}" for p in conf],
            hovertemplate="<b>confirmed</b><br>%{text}<extra></extra>"))
    overall = result.overall
    fig.add_trace(go.Scatter(
        x=[p.parameters for p in overall], y=[p.accuracy for p in overall], mode="lines+markers",
        name=f"Pareto front (hypervolume {result.hypervolume:.3f})",
        line=dict(color="black", width=2.5, dash="dash", shape="hv"),
        marker=dict(color=[colour(p.technique, techniques) for p in overall], size=12,
                    line=dict(color="black", width=2)),
        text=[_point_text(p, metric) for p in overall], hovertemplate="<b>front</b><br>%{text}<extra></extra>"))
    fig.update_xaxes(type="log", title=axis("parameters"))
    fig.update_yaxes(title=axis("accuracy", metric))
    return fig


def plot_retention(data: RetentionData) -> go.Figure:
    """Accuracy against retention of each technique's best configuration (the paper's Figures 1 and
    3), with the unregularized model's full accuracy as a dotted line. Traces: one per technique plus
    the reference line if there is one."""
    metric = data.metric
    fig = _figure(title("retention", metric))
    if not data.curves:
        return _note(fig, NO_FINISHED)
    techniques = [c.technique for c in data.curves]
    for c in data.curves:
        text = f"{c.technique}, trial {c.trial_id}<br>objective {c.objective:.4f}<br>{params_text(c.params)}"
        fig.add_trace(go.Scatter(
            x=list(c.retentions), y=list(c.accuracies), mode="lines+markers",
            name=f"{c.technique} (trial {c.trial_id})",
            line=dict(color=colour(c.technique, techniques), width=2), marker=dict(size=8),
            text=[text] * len(c.retentions),
            hovertemplate=f"retention %{{x:g}}: {metric.name} %{{y:.4f}}<br>%{{text}}<extra></extra>"))
    levels = sorted({p for c in data.curves for p in c.retentions})
    if data.reference is not None:
        x = [levels[0], levels[-1]] if levels else [0.01, 1.0]
        fig.add_trace(go.Scatter(
            x=x, y=[data.reference] * 2, mode="lines", name=f"adamw, full model ({data.reference:.3f})",
            line=dict(color="#444", width=1.5, dash="dot"),
            hovertemplate=f"unregularized full {metric.name} {data.reference:.4f} (trial {data.reference_trial})"
                          "<extra></extra>"))
    fig.update_xaxes(type="log", title=axis("retention"), tickvals=levels, ticktext=[f"{p:g}" for p in levels])
    fig.update_yaxes(title=axis("accuracy", metric))
    return fig


def plot_sensitivity(panels: list[Sensitivity], metric: Metric = DEFAULT_METRIC) -> go.Figure:
    """The objective against each hyperparameter, one panel per hyperparameter, coloured by
    technique, the marker by status. Traces: one per (panel, technique with points there)."""
    if not panels or not any(s.points for s in panels):
        return _note(_figure(title("sensitivity", metric)), "no trial has reported an objective yet")
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[s.param for s in panels],
                        horizontal_spacing=0.1, vertical_spacing=0.18)
    fig.update_layout(title=title("sensitivity", metric), template="plotly_white", height=max(HEIGHT, 330 * rows),
                      margin=dict(l=70, r=30, t=80, b=60), hovermode="closest")
    techniques = sorted({p.technique for s in panels for p in s.points})
    shown: set = set()
    for i, s in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        for tech in techniques:
            pts = [p for p in s.points if p.technique == tech]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[p.value for p in pts], y=[p.objective for p in pts], mode="markers", name=tech,
                legendgroup=tech, showlegend=tech not in shown,
                marker=dict(color=colour(tech, techniques), size=9, symbol=[symbol(p.status) for p in pts],
                            line=dict(width=1)),
                text=[f"trial {p.trial_id} ({p.status})" for p in pts],
                hovertemplate=f"{s.param}=%{{x:g}}<br>objective %{{y:.4f}}<br>%{{text}}<extra>{tech}</extra>"),
                row=row, col=col)
            shown.add(tech)
        fig.update_xaxes(type="log" if s.log_x else "linear", title=s.param, row=row, col=col)
        fig.update_yaxes(title=axis("objective", metric) if col == 1 else None, row=row, col=col)
    return fig


def plot_progress(curves: list[Progress], metric: Metric = DEFAULT_METRIC) -> go.Figure:
    """The objective against epoch for every trial (ASHA's view of the sweep); trials stopped early
    end in an X, trials still running in an open diamond. Traces: one per trial, plus one for the
    stopped and one for the running trials if there are any."""
    fig = _figure(title("progress", metric))
    if not curves:
        return _note(fig, "no trial has reported an objective yet")
    techniques = sorted({c.technique for c in curves})
    shown: set = set()
    for c in curves:
        fig.add_trace(go.Scatter(
            x=list(c.epochs), y=list(c.objectives), mode="lines+markers", name=c.technique,
            legendgroup=c.technique, showlegend=c.technique not in shown,
            line=dict(color=colour(c.technique, techniques), width=1.5), marker=dict(size=5), opacity=0.8,
            hovertemplate=f"trial {c.trial_id} ({c.technique}, {c.status})<br>"
                          "epoch %{x}: objective %{y:.4f}<extra></extra>"))
        shown.add(c.technique)
    for status, name, mark in (("stopped", "stopped early (ASHA)", "x"), ("running", "still running", "diamond-open")):
        ends = [c for c in curves if c.status == status]
        if ends:
            fig.add_trace(go.Scatter(
                x=[c.epochs[-1] for c in ends], y=[c.objectives[-1] for c in ends], mode="markers", name=name,
                marker=dict(symbol=mark, size=12, color="black", line=dict(width=2)),
                text=[f"trial {c.trial_id} ({c.technique})" for c in ends],
                hovertemplate=f"%{{text}}: {name} at epoch %{{x}}<extra></extra>"))
    fig.update_xaxes(title=axis("epoch"))
    fig.update_yaxes(title=axis("objective", metric))
    return fig

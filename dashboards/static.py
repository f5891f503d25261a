"""PNG versions of the sweep figures (matplotlib, no browser needed).

Each ``*_png`` function draws what one function of ``dashboards.data`` computed, writes ``path``
and returns it; an empty input gives a PNG that says why it is empty.
"""
from __future__ import annotations

import math
from pathlib import Path

from tuning.trial.metrics import DEFAULT_METRIC, Metric

from .style import NO_FINISHED, axis, colour, marker, title, value_text

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path)
    _plt().close(fig)
    return path


def _finish(fig, ax, path: Path, figure: str, x: str, y: str, metric: Metric = DEFAULT_METRIC) -> Path:
    """Axis labels, title, grid and legend of a one-panel figure, then save it."""
    ax.set_xlabel(axis(x, metric))
    ax.set_ylabel(axis(y, metric))
    ax.set_title(title(figure, metric), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _empty(path: Path, title: str, text: str) -> Path:
    fig, ax = _plt().subplots(figsize=(7, 3), dpi=DPI)
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="#666", transform=ax.transAxes)
    ax.set_axis_off()
    return _save(fig, path)


def pareto_png(result, path: Path) -> Path:
    """Every (trial, retention) point faint, each technique's front as a line, the overall front bold."""
    if not result.all_points:
        return _empty(path, title("pareto", result.metric), NO_FINISHED)
    fig, ax = _plt().subplots(figsize=(7, 4.5), dpi=DPI)
    techniques = sorted(result.per_technique)
    for tech in techniques:
        c = colour(tech, techniques)
        pts = [p for p in result.all_points if p.technique == tech]
        front = result.per_technique[tech]
        ax.scatter([p.parameters for p in pts], [p.accuracy for p in pts], s=12, color=c, alpha=0.25)
        ax.step([p.parameters for p in front], [p.accuracy for p in front], "-o", where="post", ms=3, lw=1,
                color=c, label=tech)
    for p in result.confirmed:                          # confirmed over seeds: mean with a std error bar
        ax.errorbar(p.parameters, p.accuracy, yerr=p.std, fmt="D", ms=6, color=colour(p.technique, techniques),
                    ecolor="#444", mec="#444", capsize=3, zorder=4)
    overall = result.overall
    ax.step([p.parameters for p in overall], [p.accuracy for p in overall], "k--", where="post", lw=1.5,
            label=f"front (hypervolume {result.hypervolume:.3f})")
    ax.scatter([p.parameters for p in overall], [p.accuracy for p in overall], s=50, zorder=3,
               color=[colour(p.technique, techniques) for p in overall], edgecolors="black")
    ax.set_xscale("log")
    return _finish(fig, ax, path, "pareto", "parameters", "accuracy", result.metric)


def retention_png(data, path: Path) -> Path:
    """Accuracy against retention of each technique's best configuration, the adamw reference dotted."""
    if not data.curves:
        return _empty(path, title("retention", data.metric), NO_FINISHED)
    fig, ax = _plt().subplots(figsize=(7, 4.5), dpi=DPI)
    techniques = [c.technique for c in data.curves]
    for c in data.curves:
        ax.plot(c.retentions, c.accuracies, "-o", ms=4, color=colour(c.technique, techniques),
                label=f"{c.technique} (trial {c.trial_id})")
    levels = sorted({p for c in data.curves for p in c.retentions})
    if data.reference is not None:
        ax.axhline(data.reference, color="#444", ls=":", lw=1.5, label=f"adamw, full model ({data.reference:.3f})")
    ax.set_xscale("log")
    if levels:
        ax.set_xticks(levels, [f"{p:g}" for p in levels])
        ax.minorticks_off()
    return _finish(fig, ax, path, "retention", "retention", "accuracy", data.metric)


def sensitivity_png(panels, path: Path, metric: Metric = DEFAULT_METRIC) -> Path:
    """One panel per hyperparameter: objective against its value, coloured by technique, marked by status."""
    if not panels or not any(s.points for s in panels):
        return _empty(path, title("sensitivity", metric), "no trial has reported an objective yet")
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(4.2 * cols + 1.4, 3.3 * rows), dpi=DPI, squeeze=False)
    techniques = sorted({p.technique for s in panels for p in s.points})
    labelled: set = set()
    for ax, s in zip(axes.flat, panels):
        for tech, status in sorted({(p.technique, p.status) for p in s.points}):
            pts = [p for p in s.points if (p.technique, p.status) == (tech, status)]
            ax.scatter([p.value for p in pts], [p.objective for p in pts], s=30, marker=marker(status),
                       color=colour(tech, techniques), label=tech if tech not in labelled else None)
            labelled.add(tech)
        if s.log_x:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(s.param)
        ax.set_ylabel(axis("objective", metric))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title("sensitivity", metric) + " (x: stopped early)", fontsize=10)
    fig.legend(fontsize=8, loc="center right")
    return _save(fig, path, rect=(0, 0, 1 - 1.4 / (4.2 * cols + 1.4), 1))


def progress_png(curves, path: Path, metric: Metric = DEFAULT_METRIC) -> Path:
    """The objective against epoch for every trial; stopped trials end in an X, running ones in a diamond."""
    if not curves:
        return _empty(path, title("progress", metric), "no trial has reported an objective yet")
    fig, ax = _plt().subplots(figsize=(7, 4.5), dpi=DPI)
    techniques = sorted({c.technique for c in curves})
    labelled: set = set()
    for c in curves:
        ax.plot(c.epochs, c.objectives, "-", marker=".", lw=1, alpha=0.8, color=colour(c.technique, techniques),
                label=c.technique if c.technique not in labelled else None)
        labelled.add(c.technique)
    for status, name, mark in (("stopped", "stopped early (ASHA)", "X"), ("running", "still running", "D")):
        ends = [c for c in curves if c.status == status]
        if ends:
            ax.scatter([c.epochs[-1] for c in ends], [c.objectives[-1] for c in ends], marker=mark, s=60,
                       facecolors="black" if mark == "X" else "none", edgecolors="black", zorder=3, label=name)
    return _finish(fig, ax, path, "progress", "epoch", "objective", metric)


COLUMNS = ("budget", "technique", "hyperparameters", "retention", "parameters", "accuracy", "std", "seeds",
           "trial_id")


def columns(metric: Metric = DEFAULT_METRIC) -> tuple:
    """The recommendation table's columns, the metric's under its name."""
    return tuple(metric.name if c == "accuracy" else c for c in COLUMNS)


def cell(key: str, value, metric: Metric = DEFAULT_METRIC) -> str:
    if key == "parameters" and isinstance(value, int):
        return f"{value:,}"
    if key in (metric.name, "std") and isinstance(value, float):
        return f"{value:.4f}"
    if key == "std" and value is None:
        return "-"
    if key == "budget" and isinstance(value, float):
        return f"{value:g} of targeted"
    return value_text(value)


def recommendations_png(rows: list[dict], path: Path, metric: Metric = DEFAULT_METRIC) -> Path:
    """The recommendation table as an image."""
    if not rows:
        return _empty(path, title("recommendations"), NO_FINISHED)
    fig, ax = _plt().subplots(figsize=(11, 0.3 * (len(rows) + 2)), dpi=DPI)
    ax.set_axis_off()
    cols = columns(metric)
    table = ax.table(cellText=[[cell(k, r.get(k, ""), metric) for k in cols] for r in rows], colLabels=cols,
                     loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(cols))))
    ax.set_title(title("recommendations"), fontsize=10)
    return _save(fig, path)
